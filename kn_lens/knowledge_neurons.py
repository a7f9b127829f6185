"""Knowledge neurons: coarse neurons per prompt, refinement across a bag, adaptive sharing
threshold.

The paper's procedure (Dai et al. 2022, section 3.3), for one fact and its bag of prompts:

1. **Attribute.** Score every feed-forward neuron for every prompt with integrated gradients
   (:func:`kn_lens.attribution.attribute`, ``method="ig"``). The baseline scores neurons by their
   raw activation at ``[MASK]`` instead (``method="activation"``).
2. **Coarse neurons** (:func:`coarse_neurons`). Per prompt, keep the neurons whose score is at least
   ``t`` times that prompt's maximum score over all layers and neurons (``t = 0.2``; the baseline
   uses ``t = 0.5``). A prompt whose maximum is not positive has no coarse neurons.
3. **Refinement** (:func:`refine`). Keep the neurons that are coarse in at least
   :func:`shared_count_threshold` ``(n, p, m) = max(ceil(p * n), min(m, n))`` of the bag's ``n``
   prompts: a share ``p`` of them (``p = 0.7``, rounded *up* to a whole count of prompts, as a count
   threshold ``count >= p * n``), and never fewer than ``m = 3`` prompts. A bag with fewer than 3
   prompts cannot meet the floor of 3, so the floor there is capped at ``n``: the neuron must be
   coarse in *every* prompt of the bag.
4. **Adaptive p** (:func:`identify_relation`). For each relation, start at ``p = 0.7`` and refine
all
   its bags; while the mean number of knowledge neurons per fact is outside ``[2, 5]``, raise ``p``
   by 0.05 (too many neurons) or lower it (too few), for at most 6 rounds in all. The neurons of the
   last round are kept; ``converged`` says whether its mean lies in the range.

Attribution is the only expensive step, so :func:`score_bag` runs it once per bag and method and
stores the result sparsely in a :class:`BagScores` record (per prompt: the maximum and every neuron
scoring at least ``floor = 0.1`` times it). Any ``t >= floor`` and any ``p`` can then be applied
without recomputing gradients, and the record round-trips through JSON (``to_dict``/``from_dict``)
so a run can store one per line and resume (:mod:`kn_lens.bag_scores`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

import kn_lens.attribution as attribution
from kn_lens.bag_scores import (
    DEFAULT_FLOOR,
    METHODS,
    BagScores,
    PromptScores,
    check_method,
    sparsify,
)
from kn_lens.config import PaperConfig, default_batch_size
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron, model_shape, neurons_from_json
from kn_lens.results import Result

#: What :func:`score_bag` stores by default: the paper's method and its activation baseline.
STORED_METHODS: tuple[str, ...] = ("ig", "activation")
__all__ = [
    "DEFAULT_FLOOR",
    "METHODS",
    "STORED_METHODS",
    "BagScores",
    "PromptScores",
    "RelationNeurons",
    "coarse_neurons",
    "coarse_threshold",
    "find_knowledge_neurons",
    "identify_all",
    "identify_relation",
    "refine",
    "score_bag",
    "score_bags",
    "shared_count_threshold",
    "sparsify",
]


def coarse_threshold(config: PaperConfig, method: str) -> float:
    """The coarse threshold ``t`` of ``method``: ``config.t`` for the gradient methods (IG and
    grad x act), ``config.baseline_t`` for the activation baseline."""
    return config.baseline_t if check_method(method) == "activation" else config.t


def attribution_batch_size(
    model: Model, config: PaperConfig | None = None, batch_size: int | None = None
) -> int:
    """Rows per attribution pass: ``batch_size`` when given, else ``config.batch_size`` when it
    differs from :class:`PaperConfig`'s default, else
    :func:`kn_lens.config.default_batch_size` of the model's device (64 on the CPU, 2048 on
    CUDA: what :func:`kn_lens.attribution.attribute` itself picks).

    ``PaperConfig.batch_size`` keeps its plain default of 64 for the analyses' read-out passes, so
    a config that leaves it alone does not shrink attribution on a GPU; to run attribution at
    exactly 64 rows on a GPU, pass ``batch_size=64``.
    """
    if batch_size is not None:
        return batch_size
    if config is not None and config.batch_size != PaperConfig.batch_size:
        return config.batch_size
    return default_batch_size(model.cfg.device or "cpu")


def score_bag(
    model: Model,
    bag: FactBag,
    config: PaperConfig | None = None,
    *,
    methods: Sequence[str] = STORED_METHODS,
    floor: float = DEFAULT_FLOOR,
    dtype: torch.dtype | str | None = None,
    batch_size: int | None = None,
    contrast: Sequence[Any] | None = None,
) -> BagScores:
    """Attribute every prompt of ``bag`` once per method and keep the sparse scores.

    Calls :func:`kn_lens.attribution.attribute` for each of ``methods`` (default both ``"ig"``
    and the ``"activation"`` baseline) with ``config.steps``, ``config.baseline`` and
    ``config.objective`` (the gradient methods; and ``contrast``, other answers, when given);
    with ``dtype``, default
    ``config.dtype`` (``"float32"``, exact, unless the config says otherwise); and with
    :func:`attribution_batch_size` rows per pass (``batch_size``, else a ``config.batch_size``
    set away from its default, else the device's default).
    """
    config = config or PaperConfig()
    rows = attribution_batch_size(model, config, batch_size)
    tensors = {}
    for m in methods:
        gradient = check_method(m) != "activation"
        tensors[m] = attribution.attribute(
            model,
            list(bag.prompts),
            bag.object,
            steps=config.steps,
            method=m,
            baseline=config.baseline if gradient else "zero",
            objective=config.objective,
            contrast=contrast if gradient else None,
            batch_size=rows,
            dtype=config.dtype if dtype is None else dtype,
        )
    return BagScores.from_tensors(bag, tensors, floor=floor, steps=config.steps)


def score_bags(
    model: Model,
    bags: Sequence[FactBag],
    config: PaperConfig | None = None,
    *,
    methods: Sequence[str] = STORED_METHODS,
    floor: float = DEFAULT_FLOOR,
    progress: bool = False,
    dtype: torch.dtype | str | None = None,
    batch_size: int | None = None,
) -> list[BagScores]:
    """:func:`score_bag` for each bag (with a progress bar when ``progress``)."""
    it: Iterable[FactBag] = bags
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(bags, desc="attributing bags", unit="bag")
    return [
        score_bag(
            model, b, config, methods=methods, floor=floor, dtype=dtype, batch_size=batch_size
        )
        for b in it
    ]


# --------------------------------------------------------------------------------------------
# Coarse neurons and refinement
# --------------------------------------------------------------------------------------------


def coarse_neurons(
    scores: Float[Tensor, "prompt layer d_mlp"] | BagScores,
    t: float,
    *,
    method: str = "ig",
) -> list[set[Neuron]]:
    """Per prompt, the neurons scoring at least ``t`` times the prompt's maximum score.

    Args:
        scores: dense ``[prompt, layer, d_mlp]`` scores, or a :class:`BagScores` record (then
            ``method`` picks which scores, and ``t`` must be at least its ``floor``).
        t: coarse threshold in ``[0, 1]``.

    A prompt whose maximum score is ``<= 0`` has no coarse neurons.
    """
    if not 0 <= t <= 1:
        raise KnLensError(f"coarse threshold t must lie in [0, 1], got {t}")
    if isinstance(scores, BagScores):
        if t < scores.floor:
            raise KnLensError(
                f"t={t} is below the floor {scores.floor} kept in BagScores "
                f"{scores.key}; re-score with a lower floor"
            )
        out: list[set[Neuron]] = []
        for ps in scores.prompt_scores(method):
            if ps.max_score <= 0:
                out.append(set())
                continue
            cut = t * ps.max_score
            out.append({Neuron(layer, idx) for layer, idx, s in ps.neurons if s >= cut})
        return out
    return [{Neuron(layer, idx) for layer, idx, _ in ps.neurons} for ps in sparsify(scores, t)]


def shared_count_threshold(n_prompts: int, p: float, min_shared: int = 3) -> int:
    """How many of a bag's ``n_prompts`` prompts a neuron must be coarse in to be kept:
    ``max(ceil(p * n_prompts), min(min_shared, n_prompts))``.

    ``ceil`` turns the share into the count test ``count >= p * n_prompts`` (a tolerance of 1e-9
    keeps, e.g., ``0.7 * 10`` at 7). The floor ``min_shared`` is capped at ``n_prompts``, so a bag
    with fewer prompts than the floor requires the neuron in all of them.
    """
    if n_prompts < 1:
        raise KnLensError("a bag needs at least one prompt")
    if not 0 <= p <= 1:
        raise KnLensError(f"sharing threshold p must lie in [0, 1], got {p}")
    return max(math.ceil(p * n_prompts - 1e-9), min(int(min_shared), n_prompts), 1)


def coarse_counts(coarse: Sequence[set[Neuron]]) -> Counter[Neuron]:
    """In how many prompts each neuron is coarse."""
    c: Counter[Neuron] = Counter()
    for s in coarse:
        c.update(s)
    return c


def _select(counts: Counter[Neuron], need: int) -> list[Neuron]:
    kept = [n for n, c in counts.items() if c >= need]
    return sorted(kept, key=lambda n: (-counts[n], n.layer, n.index))


def refine(coarse: Sequence[set[Neuron]], p: float, *, min_shared: int = 3) -> list[Neuron]:
    """The knowledge neurons of a bag: those coarse in at least
    :func:`shared_count_threshold` ``(len(coarse), p, min_shared)`` prompts.

    Sorted by how many prompts share them (most first), then by layer and index.
    """
    need = shared_count_threshold(len(coarse), p, min_shared)
    return _select(coarse_counts(coarse), need)


def most_shared(coarse: Sequence[set[Neuron]]) -> list[Neuron]:
    """The neurons coarse in the most prompts of a bag, all of them tied at that count: the
    paper's sharing threshold lowered just far enough to keep at least one neuron.

    Sorted as :func:`refine` sorts. Empty only when no prompt has a coarse neuron.
    """
    counts = coarse_counts(coarse)
    return _select(counts, max(counts.values())) if counts else []


def find_knowledge_neurons(
    model: Model,
    bag: FactBag,
    *,
    config: PaperConfig | None = None,
    method: str = "ig",
    # a plain Tensor: its shape is checked here, with a message naming the mismatch
    scores: BagScores | Tensor | None = None,
    batch_size: int | None = None,
    contrast: Sequence[Any] | None = None,
) -> list[Neuron]:
    """The knowledge neurons of one fact, as ``Neuron(layer, index)`` pairs.

    ``method`` is any of :data:`kn_lens.attribution.METHODS` (``"ig"``, the paper's;
    ``"grad_x_act"``; ``"activation"``, the paper's baseline); the gradient methods use
    ``config.baseline`` and ``config.objective``, and ``contrast`` (other answers) when given; see
    :func:`kn_lens.attribute` for the mathematics of each.

    Attributes the bag, takes coarse neurons at ``config.t`` (``config.baseline_t`` for
    ``method="activation"``) and refines them at the fixed ``config.p`` with the floor
    ``config.min_shared_prompts``. The adaptive choice of ``p`` needs a whole relation: use
    :func:`identify_relation` for that.

    Args:
        scores: scores computed before, used instead of attributing again: the tensor
            :func:`kn_lens.attribute` returns for ``bag.prompts`` and ``bag.object`` (shape
            ``[prompt, layer, d_mlp]``, every layer, scores of ``method``), or a
            :class:`BagScores` record of this bag. A tensor of another shape, or a record of
            another bag or model, raises :class:`~kn_lens.errors.KnLensError` naming the
            mismatch.
        batch_size: rows per attribution pass (see :func:`attribution_batch_size`; default: the
            model device's, as :func:`kn_lens.attribute` uses).

    Example::

        model = kn_lens.load_model("default")
        bag = kn_lens.data.default_facts()[0]
        kn_lens.find_knowledge_neurons(model, bag)   # e.g. [Neuron(layer=4, index=812), ...]
        scores = kn_lens.attribute(model, bag.prompts, bag.object)
        kn_lens.find_knowledge_neurons(model, bag, scores=scores)   # the same, no new gradients
    """
    config = config or PaperConfig()
    check_method(method)
    t = coarse_threshold(config, method)
    if scores is None:
        scores = score_bag(
            model, bag, config, methods=(method,), batch_size=batch_size, contrast=contrast
        )
    elif isinstance(scores, BagScores):
        _check_bag_scores(scores, bag, model)
    elif isinstance(scores, Tensor):
        _check_dense_scores(scores, bag, model)
    else:
        raise KnLensError(
            "scores= takes the tensor kn_lens.attribute returns or a BagScores record, "
            f"not {type(scores).__name__}"
        )
    coarse = coarse_neurons(scores, t, method=method)
    return refine(coarse, config.p, min_shared=config.min_shared_prompts)


def _check_bag_scores(scores: BagScores, bag: FactBag, model: Model) -> None:
    """``KnLensError`` unless ``scores`` is a record of ``bag`` on a model of ``model``'s shape."""
    if scores.key != bag.key:
        raise KnLensError(f"scores are for bag {scores.key}, not {bag.key}")
    if scores.n_prompts != len(bag.prompts):
        raise KnLensError(
            f"scores of bag {bag.key} hold {scores.n_prompts} prompts, the bag has "
            f"{len(bag.prompts)}"
        )
    n_layers, d_mlp = model_shape(model)
    if (scores.n_layers, scores.d_mlp) != (n_layers, d_mlp):
        raise KnLensError(
            f"scores of bag {bag.key} are of a model with {scores.n_layers} layers x "
            f"{scores.d_mlp} neurons, this one has {n_layers} x {d_mlp}"
        )


def _check_dense_scores(scores: Tensor, bag: FactBag, model: Model) -> None:
    """``KnLensError`` naming the mismatch unless ``scores`` is ``[prompt, layer, d_mlp]`` for
    ``bag`` and ``model``, as :func:`kn_lens.attribute` returns it."""
    n_layers, d_mlp = model_shape(model)
    want = (len(bag.prompts), n_layers, d_mlp)
    got = tuple(scores.shape)
    what = (
        f"scores of shape {list(got)} do not fit bag {bag.key} and this model: "
        f"expected [prompt, layer, d_mlp] = {list(want)}"
    )
    if len(got) != 3:
        raise KnLensError(f"{what} (kn_lens.attribute(model, bag.prompts, bag.object) gives it)")
    if got[0] != want[0]:
        raise KnLensError(f"{what}: {got[0]} prompt rows for the bag's {want[0]} prompts")
    if got[1] != want[1]:
        raise KnLensError(
            f"{what}: {got[1]} layers for the model's {want[1]} (attribute every layer: "
            "leave layers= out)"
        )
    if got[2] != want[2]:
        raise KnLensError(f"{what}: {got[2]} neurons per layer for the model's d_mlp {want[2]}")
    if not scores.is_floating_point():
        raise KnLensError(f"scores must be floating point, got {scores.dtype}")


# --------------------------------------------------------------------------------------------
# Adaptive sharing threshold per relation
# --------------------------------------------------------------------------------------------


@dataclass
class RelationNeurons(Result):
    """Knowledge neurons of every bag of one relation, after the adaptive choice of ``p``.

    Attributes:
        relation: relation id.
        method: ``"ig"`` (ours) or ``"activation"`` (baseline).
        t: coarse threshold used.
        p: the sharing threshold of the final round.
        rounds: how many refinement rounds ran (1 .. ``config.p_rounds``).
        converged: whether the final mean neurons per fact lies in ``config.target_neurons``.
        mean_neurons: mean number of knowledge neurons per fact in the final round.
        history: ``[[p, mean_neurons], ...]``, one entry per round.
        neurons: bag key -> its knowledge neurons (``[[layer, index], ...]`` in JSON).
    """

    schema: ClassVar[str] = "relation_neurons"

    relation: str
    method: str
    t: float
    p: float
    rounds: int
    converged: bool
    mean_neurons: float
    history: list[tuple[float, float]]
    neurons: dict[str, list[Neuron]]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RelationNeurons:
        return cls(
            str(d["relation"]),
            str(d["method"]),
            float(d["t"]),
            float(d["p"]),
            int(d["rounds"]),
            bool(d["converged"]),
            float(d["mean_neurons"]),
            [(float(a), float(b)) for a, b in d["history"]],
            {
                k: neurons_from_json(v, f"RelationNeurons {d['relation']}: neurons of {k}")
                for k, v in d["neurons"].items()
            },
        )


def adaptive_refine(
    coarse_by_bag: Mapping[str, Sequence[set[Neuron]]],
    *,
    p: float = 0.7,
    p_step: float = 0.05,
    p_rounds: int = 6,
    target: tuple[float, float] = (2.0, 5.0),
    min_shared: int = 3,
) -> tuple[float, int, bool, list[tuple[float, float]], dict[str, list[Neuron]]]:
    """The adaptive-p loop on precomputed coarse neurons (pure; no model).

    Round 1 refines every bag at ``p``. While the mean count of neurons per bag is above
    ``target[1]`` p rises by ``p_step``; below ``target[0]`` it falls; at most ``p_rounds`` rounds,
    and the loop also stops when ``p`` cannot move (clamped to ``[0, 1]``).

    Returns ``(p, rounds, converged, history, neurons)`` of the final round.
    """
    if not coarse_by_bag:
        raise KnLensError("no bags to refine")
    if p_rounds < 1:
        raise KnLensError(f"p_rounds must be >= 1, got {p_rounds}")
    lo, hi = target
    counts = {k: (len(c), coarse_counts(c)) for k, c in coarse_by_bag.items()}
    history: list[tuple[float, float]] = []
    neurons: dict[str, list[Neuron]] = {}
    converged = False
    for r in range(p_rounds):
        neurons = {
            k: _select(cnt, shared_count_threshold(n, p, min_shared))
            for k, (n, cnt) in counts.items()
        }
        mean = sum(len(v) for v in neurons.values()) / len(neurons)
        history.append((p, mean))
        if lo <= mean <= hi:
            converged = True
            break
        new_p = min(1.0, max(0.0, round(p + (p_step if mean > hi else -p_step), 10)))
        if r == p_rounds - 1 or new_p == p:
            break
        p = new_p
    return p, len(history), converged, history, neurons


def identify_relation(
    bag_scores: Sequence[BagScores],
    config: PaperConfig | None = None,
    method: str = "ig",
) -> RelationNeurons:
    """Knowledge neurons of all bags of one relation, with the adaptive sharing threshold.

    Coarse neurons use ``config.t`` (``config.baseline_t`` for ``method="activation"``); the loop
    starts at ``config.p`` and moves by ``config.p_step`` for at most ``config.p_rounds`` rounds
    until the mean neurons per fact lies in ``config.target_neurons``. No gradients are computed.

    Raises ``KnLensError`` (a ``ValueError``) if the bags are empty, mix relations, or lack
    ``method`` scores.
    """
    config = config or PaperConfig()
    check_method(method)
    if not bag_scores:
        raise KnLensError("identify_relation needs at least one bag")
    relation = bag_scores[0].relation
    for bs in bag_scores:
        if bs.relation != relation:
            raise KnLensError(f"bag {bs.key} is of relation {bs.relation}, not {relation}")
    keys = [bs.key for bs in bag_scores]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise KnLensError(f"bag {dup} appears twice")
    t = coarse_threshold(config, method)
    coarse = {bs.key: coarse_neurons(bs, t, method=method) for bs in bag_scores}
    p, rounds, converged, history, neurons = adaptive_refine(
        coarse,
        p=config.p,
        p_step=config.p_step,
        p_rounds=config.p_rounds,
        target=(float(config.target_neurons[0]), float(config.target_neurons[1])),
        min_shared=config.min_shared_prompts,
    )
    return RelationNeurons(
        relation, method, t, p, rounds, converged, history[-1][1], history, neurons
    )


def identify_all(
    bag_scores: Sequence[BagScores],
    config: PaperConfig | None = None,
    method: str = "ig",
) -> dict[str, RelationNeurons]:
    """:func:`identify_relation` for every relation present, in first-seen order."""
    groups: dict[str, list[BagScores]] = {}
    for bs in bag_scores:
        groups.setdefault(bs.relation, []).append(bs)
    return {rel: identify_relation(g, config, method) for rel, g in groups.items()}
