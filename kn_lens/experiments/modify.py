"""Suppressing and amplifying knowledge neurons (paper, Section 4.4 / Figure 3).

For each fact with knowledge neurons, at each prompt's ``[MASK]`` only
(:mod:`kn_lens.interventions`, hooks on ``blocks.{l}.mlp.hook_post``):

- **suppress**: set the fact's neurons' activations to 0;
- **amplify**: multiply them by ``config.amplify_factor`` (2).

and measure the change in the probability of the correct answer

- on the fact's **own** prompts (its bag), and
- on the prompts of **one unrelated fact**: a bag drawn at random from another relation (seeded
  by ``config.seed`` and the fact's key), with *its* correct answer, under the *first* fact's
  neurons;
- beyond the paper, for specificity: on **another fact of the same relation** (``same``), drawn
  the same way;
- beyond the paper: the **answer flips**, the share of the fact's own prompts whose top-1
  prediction changes under the intervention (``flip``).

A fact's ``p`` and ``Δp`` are means over its prompts. A relation's ratio is the paper's
``mean Δp / mean p`` over its facts, in percent. ``overall`` averages the relation ratios (each
relation counts once, as the paper's figure does), ``pooled`` takes ``mean Δp / mean p`` over all
facts at once. Both our neurons (integrated gradients) and the activation-baseline neurons are
measured the same way, and (``config.modify_random``) a **random control**: for each fact, as many
random neurons as it has knowledge neurons, drawn from the same layers (seeded by the fact's key;
:func:`kn_lens.experiments.controls.random_control`);
a fact without neurons of a method is left out of that method's numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import random_control
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.interventions import scaled_answer_reads
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron, check_neurons, model_shape
from kn_lens.readout import encode_facts, first_token
from kn_lens.results import (
    ReportRow,
    Result,
    dig,
    mean_or_nan,
    percent,
    relative_change,
    report_row,
)

#: The paper's Figure 3 averages for bert-base-cased (% change of the correct answer's probability).
PAPER: dict[str, Any] = {
    "model": "bert-base-cased",
    "suppress": {"ours": -29.03, "baseline": -1.47},
    "amplify": {"ours": 31.17, "baseline": -1.27},
    "unit": "% change of the correct answer's probability (mean Δp / mean p), own prompts",
    "note": "The paper reports that unrelated facts change much less; it gives no average for "
    "them.",
}

OPERATIONS: tuple[str, ...] = ("suppress", "amplify")


@dataclass
class FactChange:
    """One fact's probability changes.

    Attributes:
        key, relation, object: the fact.
        other_key: the unrelated bag (another relation) measured under this fact's neurons;
            null when there is no other relation.
        n_neurons: ``{"ours": n, "baseline": n}``.
        p_own: mean probability of the correct answer over the fact's own prompts, unmodified.
        p_other: the same for the unrelated bag (its own correct answer); null without one.
        delta: ``{method: {operation: {"own": Δp, "other": Δp}}}`` (means over prompts; absent
            for a method whose neuron list is empty).
    """

    key: str
    relation: str
    object: str
    other_key: str | None
    n_neurons: dict[str, int]
    p_own: float
    p_other: float | None
    delta: dict[str, dict[str, dict[str, float | None]]]
    same_key: str | None = None
    p_same: float | None = None


@dataclass
class ChangeStats:
    """Mean probability change over a set of facts for one method and operation.

    Attributes:
        n_facts: facts with neurons of the method.
        own_p, own_delta: mean over facts of the unmodified probability and of its change, own
            prompts.
        own_pct: ``100 * own_delta / own_p`` (the paper's measure).
        n_facts_other, other_p, other_delta, other_pct: the same on the unrelated facts' prompts.
    """

    n_facts: int
    own_p: float
    own_delta: float
    own_pct: float
    n_facts_other: int
    other_p: float
    other_delta: float
    other_pct: float
    n_facts_same: int = 0
    same_p: float = math.nan
    same_delta: float = math.nan
    same_pct: float = math.nan
    flip: float = math.nan  # mean over facts of the share of own prompts whose top-1 changed


@dataclass
class ModifyResult(Result):
    """Suppress / amplify the knowledge neurons (schema ``"modify"``).

    Attributes:
        methods: ``("ours", ...)`` and ``"baseline"`` when baseline neurons were given.
        operations: ``("suppress", "amplify")``.
        relations: relation id -> method -> operation -> :class:`ChangeStats`.
        overall: method -> operation -> ``{"own_pct", "other_pct", "n_relations", "n_facts"}``,
            the mean of the relations' ratios (paper style).
        pooled: method -> operation -> :class:`ChangeStats` over all facts at once.
        facts: one :class:`FactChange` per analysed fact.
        skipped_facts: fact key -> why it was left out of every method (``"no_neurons"``).
        settings: amplify_factor, seed.
    """

    schema = "modify"

    methods: tuple[str, ...]
    operations: tuple[str, ...]
    relations: dict[str, dict[str, dict[str, ChangeStats]]]
    overall: dict[str, dict[str, dict[str, float]]]
    pooled: dict[str, dict[str, ChangeStats]]
    facts: list[FactChange]
    skipped_facts: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def unrelated_bag(bags: Sequence[FactBag], bag: FactBag, seed: int) -> FactBag | None:
    """One bag of another relation, drawn with a generator seeded by ``seed`` and ``bag.key``."""
    pool = [b for b in bags if b.relation != bag.relation]
    if not pool:
        return None
    return pool[random.Random(f"{seed}:modify:{bag.key}").randrange(len(pool))]


def related_bag(bags: Sequence[FactBag], bag: FactBag, seed: int) -> FactBag | None:
    """Another bag of the same relation, drawn with a generator seeded by ``seed`` and
    ``bag.key``."""
    pool = [b for b in bags if b.relation == bag.relation and b.key != bag.key]
    if not pool:
        return None
    return pool[random.Random(f"{seed}:modify-same:{bag.key}").randrange(len(pool))]


def change_pct(delta: float, p: float) -> float:
    """``100 * delta / p``, the paper's % change; NaN when either is missing or ``p`` is 0."""
    return 100.0 * delta / p if p and math.isfinite(p) and math.isfinite(delta) else math.nan


def _stats(facts: Sequence[FactChange], method: str, op: str) -> ChangeStats:
    own = [
        (f.p_own, d)
        for f in facts
        if method in f.delta and (d := f.delta[method][op]["own"]) is not None
    ]
    oth = [
        (f.p_other, d)
        for f in facts
        if method in f.delta
        and f.p_other is not None
        and (d := f.delta[method][op]["other"]) is not None
    ]
    same = [
        (f.p_same, d)
        for f in facts
        if method in f.delta
        and f.p_same is not None
        and (d := f.delta[method][op].get("same")) is not None
    ]
    flips = [
        d for f in facts if method in f.delta and (d := f.delta[method][op].get("flip")) is not None
    ]
    own_p, own_d = mean_or_nan([a for a, _ in own]), mean_or_nan([b for _, b in own])
    oth_p, oth_d = mean_or_nan([a for a, _ in oth]), mean_or_nan([b for _, b in oth])
    sam_p, sam_d = mean_or_nan([a for a, _ in same]), mean_or_nan([b for _, b in same])
    return ChangeStats(
        len(own),
        own_p,
        own_d,
        change_pct(own_d, own_p),
        len(oth),
        oth_p,
        oth_d,
        change_pct(oth_d, oth_p),
        len(same),
        sam_p,
        sam_d,
        change_pct(sam_d, sam_p),
        mean_or_nan(flips),
    )


def modify(
    model: Model,
    bags: Sequence[FactBag],
    ours: Mapping[str, Sequence[Neuron]],
    baseline: Mapping[str, Sequence[Neuron]] | None = None,
    config: PaperConfig = PaperConfig(),
    *,
    progress: bool = False,
) -> ModifyResult:
    """Suppress and amplify each fact's knowledge neurons; see the module docstring.

    Args:
        model: the model.
        bags: the facts (their own prompts are measured; unrelated bags are drawn from these).
        ours: bag key -> our knowledge neurons (missing key = none).
        baseline: bag key -> baseline neurons, or ``None`` to skip the baseline.
        config: ``amplify_factor`` and ``seed`` are used.
        progress: show a progress bar over facts.
    """
    if not bags:
        raise KnLensError("no bags given")
    keys = [b.key for b in bags]
    if len(set(keys)) != len(keys):
        raise KnLensError(f"bag {next(k for k in keys if keys.count(k) > 1)} appears twice")
    methods: dict[str, Mapping[str, Sequence[Neuron]]] = {"ours": ours}
    if baseline is not None:
        methods["baseline"] = baseline
    factors = {"suppress": 0.0, "amplify": float(config.amplify_factor)}
    names = [*methods, *(["random"] if config.modify_random else [])]
    d_mlp = model_shape(model)[1]
    # Check the inputs up front so a bad neuron or answer fails before any work.
    for m, table in methods.items():
        for k, ns in table.items():
            try:
                check_neurons(model, ns, allow_empty=True, unique=False)
            except ValueError as e:
                raise KnLensError(f"{m} neurons of bag {k}: {e}") from None
    for b in bags:
        first_token(model, b.object)

    facts: list[FactChange] = []
    skipped: dict[str, str] = {}
    it: Iterable[FactBag] = bags
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(bags, desc="suppress/amplify", unit="fact")
    for bag in it:
        neuron_sets = {m: list(t.get(bag.key, [])) for m, t in methods.items()}
        if not any(neuron_sets.values()):
            skipped[bag.key] = "no_neurons"
            continue
        if config.modify_random:
            ours_here = check_neurons(model, neuron_sets["ours"], allow_empty=True)
            neuron_sets["random"] = random_control(ours_here, d_mlp, config.seed, bag.key)
        other = unrelated_bag(bags, bag, config.seed)
        same = related_bag(bags, bag, config.seed)
        parts = [bag, *([other] if other else []), *([same] if same else [])]
        prompts = [p for b in parts for p in b.prompts]
        answers = [b.object for b in parts for _ in b.prompts]
        n_own = len(bag.prompts)
        n_other = len(other.prompts) if other else 0
        s_own, s_oth, s_sam = (
            slice(0, n_own),
            slice(n_own, n_own + n_other),
            slice(n_own + n_other, len(prompts)),
        )
        enc = encode_facts(model, prompts, answers)
        base, base_top = scaled_answer_reads(model, enc, [], None, batch_size=config.batch_size)
        delta: dict[str, dict[str, dict[str, float | None]]] = {}
        for m, neurons in neuron_sets.items():
            if not neurons:
                continue
            delta[m] = {}
            for op, factor in factors.items():
                p, top = scaled_answer_reads(
                    model, enc, neurons, factor, batch_size=config.batch_size
                )
                d = p - base
                delta[m][op] = {
                    "own": float(d[s_own].mean()),
                    "other": float(d[s_oth].mean()) if other else None,
                    "same": float(d[s_sam].mean()) if same else None,
                    "flip": float((top[s_own] != base_top[s_own]).float().mean()),
                }
        facts.append(
            FactChange(
                bag.key,
                bag.relation,
                bag.object,
                other.key if other else None,
                {m: len(v) for m, v in neuron_sets.items()},
                float(base[s_own].mean()),
                float(base[s_oth].mean()) if other else None,
                delta,
                same.key if same else None,
                float(base[s_sam].mean()) if same else None,
            )
        )

    relations: dict[str, dict[str, dict[str, ChangeStats]]] = {}
    for rel in dict.fromkeys(f.relation for f in facts):
        fs = [f for f in facts if f.relation == rel]
        relations[rel] = {m: {op: _stats(fs, m, op) for op in factors} for m in names}
    overall: dict[str, dict[str, dict[str, float]]] = {}
    pooled: dict[str, dict[str, ChangeStats]] = {}
    for m in names:
        overall[m], pooled[m] = {}, {}
        for op in factors:
            rel_stats = [r[m][op] for r in relations.values() if r[m][op].n_facts]
            own = [s.own_pct for s in rel_stats if math.isfinite(s.own_pct)]
            oth = [s.other_pct for s in rel_stats if math.isfinite(s.other_pct)]
            sam = [s.same_pct for s in rel_stats if math.isfinite(s.same_pct)]
            flips = [s.flip for s in rel_stats if math.isfinite(s.flip)]
            overall[m][op] = {
                "own_pct": mean_or_nan(own),
                "other_pct": mean_or_nan(oth),
                "same_pct": mean_or_nan(sam),
                "flip": mean_or_nan(flips),
                "n_relations": len(rel_stats),
                "n_facts": sum(s.n_facts for s in rel_stats),
            }
            pooled[m][op] = _stats(facts, m, op)
    settings = {
        "amplify_factor": config.amplify_factor,
        "seed": config.seed,
        "random_control": config.modify_random,
    }
    return ModifyResult(
        tuple(names), OPERATIONS, relations, overall, pooled, facts, skipped, settings
    )


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """The paper's suppress/amplify figures beside this run's (the report's table). Changes are
    in % of the probability (a mean p below :data:`~kn_lens.results.P_FLOOR` is not headlined),
    flips in % of the prompts."""
    rows = []

    def rel(who: str, op: str, part: str) -> Any:
        return relative_change(
            dig(result, "overall", who, op, f"{part}_pct"),
            dig(result, "pooled", who, op, f"{part}_p"),
        )

    for op in ("suppress", "amplify"):
        for who in ("ours", "baseline"):
            rows.append(
                report_row(
                    f"{op}: % change of correct-answer probability ({who})",
                    dig(paper, op, who),
                    rel(who, op, "own"),
                )
            )
        rows.append(
            report_row(
                f"{op}: % change on unrelated facts (ours)",
                "small",
                rel("ours", op, "other"),
            )
        )
        if "random" in result.get("methods", ()):
            rows.append(
                report_row(
                    f"{op}: % change of correct-answer probability (random control)",
                    "-",
                    rel("random", op, "own"),
                )
            )
        rows.append(
            report_row(
                f"{op}: % change on other facts of the same relation (ours)",
                "-",
                rel("ours", op, "same"),
            )
        )
        for who in ("ours", "random"):
            if who in result.get("methods", ()):
                rows.append(
                    report_row(
                        f"{op}: % of own prompts whose top-1 flips ({who})",
                        "-",
                        percent(dig(result, "overall", who, op, "flip")),
                    )
                )
    return rows


def run(inputs: AnalysisInputs) -> ModifyResult:
    """The registry's ``modify``: :func:`modify` on the facts that have knowledge neurons."""
    bags = [b for b in inputs.bags if b.key in inputs.neurons]
    return modify(
        inputs.require_model(),
        bags,
        inputs.neurons,
        inputs.baseline,
        inputs.config,
        progress=inputs.progress,
    )


ANALYSIS = Analysis(
    "modify",
    "Suppressing and amplifying knowledge neurons (Sec. 5.1, Fig. 4-5)",
    run,
    PAPER,
    (plots.modify_figure,),
    report_rows,
)
