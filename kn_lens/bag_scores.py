"""A bag's attribution scores, stored sparsely: :class:`BagScores`.

Attribution is the only expensive step of finding knowledge neurons, so it runs once per bag and
method, and the result is kept sparsely (per prompt: the maximum and every neuron scoring at least
``floor = 0.1`` times it). Any coarse threshold ``t >= floor`` and any sharing threshold ``p`` can
then be applied without recomputing gradients (:mod:`kn_lens.knowledge_neurons`), and the record
round-trips through JSON (``to_dict``/``from_dict``), so a run stores one per line and resumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from jaxtyping import Float
from torch import Tensor

from kn_lens.config import METHOD_NAMES
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.neuron import as_int

__all__ = ["DEFAULT_FLOOR", "METHODS", "BagScores", "PromptScores", "check_method", "sparsify"]

#: Every attribution method a bag can be scored with (``kn_lens.attribution.METHODS``).
METHODS: tuple[str, ...] = METHOD_NAMES
DEFAULT_FLOOR = 0.1  # BagScores keeps neurons >= 0.1 x the prompt's max: enough for any t >= 0.1.


def check_method(method: str) -> str:
    if method not in METHODS:
        raise KnLensError(f"unknown attribution method {method!r}; expected one of {METHODS}")
    return method


@dataclass(frozen=True)
class PromptScores:
    """The kept scores of one prompt.

    Attributes:
        max_score: the prompt's maximum score over all layers and neurons (before sparsifying).
        neurons: ``(layer, index, score)`` for every neuron with ``score >= floor * max_score``,
            sorted by layer then index. Empty when ``max_score <= 0``.
    """

    max_score: float
    neurons: tuple[tuple[int, int, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max": self.max_score, "neurons": [list(n) for n in self.neurons]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptScores:
        """The JSON form back; ``KnLensError`` (a ``ValueError``) for a missing field, a
        non-finite score, or a layer or index that is not an integer (``2.7``, ``true``,
        ``"3"``)."""
        mx = _finite(d["max"], "max")
        neurons = []
        for item in d["neurons"]:
            layer, idx, score = item
            try:
                neurons.append((as_int(layer), as_int(idx), _finite(score, "score")))
            except TypeError:
                raise KnLensError(f"neuron {item!r}: layer and index must be integers") from None
        return cls(mx, tuple(neurons))


def _finite(x: Any, what: str) -> float:
    """``x`` as a finite float; ``KnLensError`` naming ``what`` otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise KnLensError(f"{what} {x!r} is not a number")
    out = float(x)
    if not math.isfinite(out):
        raise KnLensError(f"{what} {x!r} is not finite")
    return out


def sparsify(
    scores: Float[Tensor, "prompt layer d_mlp"], floor: float = DEFAULT_FLOOR
) -> list[PromptScores]:
    """Per prompt, the maximum score and the neurons scoring at least ``floor`` times it."""
    if not 0 <= floor <= 1:
        raise KnLensError(f"floor must lie in [0, 1], got {floor}")
    out = []
    s_all = scores.detach().float().cpu()
    for s in s_all:
        mx = float(s.max())
        if not math.isfinite(mx):
            raise KnLensError(f"attribution scores contain non-finite values (max {mx})")
        if mx <= 0:
            out.append(PromptScores(mx, ()))
            continue
        keep = (s >= floor * mx).nonzero().tolist()
        out.append(PromptScores(mx, tuple((int(l_), int(i), float(s[l_, i])) for l_, i in keep)))
    return out


@dataclass
class BagScores:
    """Sparse attribution scores of one bag, for re-refining without recomputing gradients.

    Attributes:
        key: the bag's key (``"P19/3"``).
        relation: relation id.
        index: the bag's index within its relation.
        object: the gold answer the scores are for.
        n_prompts: number of prompts in the bag.
        n_layers, d_mlp: the model's shape (for layer statistics).
        floor: neurons below ``floor * max`` of their prompt were dropped (coarse ``t`` must be
            ``>= floor``).
        steps: integrated-gradient steps used.
        scores: method (``"ig"``, ``"activation"``) -> one :class:`PromptScores` per prompt.

    JSON form (``to_dict``): the fields above, with ``scores`` as
    ``{method: [{"max": float, "neurons": [[layer, index, score], ...]}, ...]}``.
    """

    key: str
    relation: str
    index: int
    object: str
    n_prompts: int
    n_layers: int
    d_mlp: int
    floor: float = DEFAULT_FLOOR
    steps: int = 20
    scores: dict[str, list[PromptScores]] = field(default_factory=dict)

    schema: ClassVar[str] = "bag_scores"

    def methods(self) -> tuple[str, ...]:
        return tuple(self.scores)

    def prompt_scores(self, method: str) -> list[PromptScores]:
        check_method(method)
        if method not in self.scores:
            raise KnLensError(f"bag {self.key} has no {method!r} scores (has {list(self.scores)})")
        return self.scores[method]

    @classmethod
    def from_tensors(
        cls,
        bag: FactBag,
        tensors: dict[str, Float[Tensor, "prompt layer d_mlp"]],
        *,
        floor: float = DEFAULT_FLOOR,
        steps: int = 20,
    ) -> BagScores:
        """Build the record from dense ``[prompt, layer, d_mlp]`` scores per method."""
        if not tensors:
            raise KnLensError("no scores given")
        shapes = {tuple(t.shape) for t in tensors.values()}
        if len(shapes) != 1:
            raise KnLensError(f"bag {bag.key}: methods' score shapes differ: {shapes}")
        n, n_layers, d_mlp = shapes.pop()
        if n != len(bag.prompts):
            raise KnLensError(f"bag {bag.key}: {n} score rows for {len(bag.prompts)} prompts")
        return cls(
            bag.key,
            bag.relation,
            bag.index,
            bag.object,
            n,
            n_layers,
            d_mlp,
            floor,
            steps,
            {check_method(m): sparsify(t, floor) for m, t in tensors.items()},
        )

    def select_prompts(self, idx: Sequence[int]) -> BagScores:
        """The same record for prompts ``idx`` only (in that order), e.g. a half of the bag."""
        bad = [i for i in idx if not 0 <= i < self.n_prompts]
        if bad or not idx:
            raise KnLensError(
                f"bag {self.key}: prompt indices {list(idx)} out of range 0..{self.n_prompts - 1}"
            )
        return replace(
            self,
            n_prompts=len(idx),
            scores={m: [ps[i] for i in idx] for m, ps in self.scores.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "key": self.key,
            "relation": self.relation,
            "index": self.index,
            "object": self.object,
            "n_prompts": self.n_prompts,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "floor": self.floor,
            "steps": self.steps,
            "scores": {m: [p.to_dict() for p in ps] for m, ps in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BagScores:
        """The JSON form (``to_dict``) back. ``KnLensError`` for a malformed record: a missing
        field (``scores`` among them), a non-finite score (``NaN``, ``Infinity``), a neuron whose
        layer or index is not an integer, or a prompt count that does not match. A record read
        from a store file (``kn_lens.store.Record``) is named by its file and line."""
        where = getattr(d, "source", "") or "BagScores record"
        what = f"{where}: attribution record {d.get('key', '?')!r}"
        if "scores" not in d:
            raise KnLensError(
                f"{what} has no 'scores'; the record is incomplete or was changed by hand: delete "
                "it and run the attribute step again"
            )
        try:
            scores = {
                str(m): [PromptScores.from_dict(p) for p in ps] for m, ps in d["scores"].items()
            }
            out = cls(
                str(d["key"]),
                str(d["relation"]),
                int(d["index"]),
                str(d["object"]),
                int(d["n_prompts"]),
                int(d["n_layers"]),
                int(d["d_mlp"]),
                float(d.get("floor", DEFAULT_FLOOR)),
                int(d.get("steps", 20)),
                scores,
            )
        except KeyError as e:
            raise KnLensError(f"{what} has no {e}; delete it and run the step again") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise KnLensError(f"{what} is malformed: {e}") from None
        for m, ps in out.scores.items():
            try:
                check_method(m)
            except KnLensError as e:
                raise KnLensError(f"{what}: {e}") from None
            if len(ps) != out.n_prompts:
                raise KnLensError(f"{what}: {len(ps)} {m} prompts, expected {out.n_prompts}")
        return out
