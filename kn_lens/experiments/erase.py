"""Erasing a relation by zeroing its most common knowledge neurons (Dai et al. 2022, section 5.2).

For a relation, count in how many of its facts each neuron is a knowledge neuron, take the
``erase_top`` (20) most frequent ones (ties: lower layer, then lower index first) and set their
value vectors -- rows of ``blocks[l].mlp.W_out`` -- to zero through :mod:`kn_lens.weights`. The
model is scored before and after on every relation's bags:

- **accuracy**: share of prompts whose top-1 prediction at ``[MASK]`` (a decoder: the next token)
  is the gold answer (its first token);
- **perplexity**: exp(mean NLL of the gold answer where it is read; all of a decoder answer's
  tokens) pooled over the relation's prompts.

"Other relations" are reported per relation, pooled, and as the mean relative perplexity change.
As a control, the same number of random neurons (uniform over all layers, excluding the erased
ones: :func:`kn_lens.experiments.controls.any_layers`, seeded by the relation) is zeroed.
Weights are restored after each erasure. With PARAREL data the paper erases
:data:`PAPER_RELATIONS`; :data:`PAPER` holds its figures.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag, relation_of_key
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import any_layers, seeded_rng
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron, model_shape
from kn_lens.readout import bags_by_relation, encode_facts, perplexity, score_prompts
from kn_lens.results import (
    ReportRow,
    Result,
    dig,
    is_number,
    mean_or_nan,
    percent,
    report_row,
)
from kn_lens.weights import RowEdit, zero_rows

#: The relations the paper erases (BERT-base-cased on PARAREL), with their labels, by which their
#: analogues in a fact world with other relation ids are found.
PAPER_RELATIONS: dict[str, str] = {
    "P19": "place of birth",
    "P27": "country of citizenship",
    "P106": "occupation",
    "P937": "work location",
}

#: The paper's figures (Table 5 of Dai et al. 2022): perplexity of the erased relation before and
#: after; other relations' perplexity rose by 1% to 10%.
PAPER: dict[str, Any] = {
    "P19": {"ppl_before": 1450.0, "ppl_after": 2996.0},
    "P106": {"ppl_before": 2279.0, "ppl_after": 5202.0},
    "other_relations_ppl_change": [0.01, 0.10],
    "note": "The paper zeroes the value vectors of each relation's 20 most frequent knowledge "
    "neurons: the relation's perplexity about doubles (P19 1450 -> 2996, P106 2279 -> 5202) while "
    "other relations' rises by 1% to 10% (Table 5).",
}


def relation_top_neurons(
    neurons: Mapping[str, Sequence[Any]], relation: str, top: int = 20
) -> list[tuple[Neuron, int]]:
    """The ``top`` neurons occurring in most of ``relation``'s facts, with their fact counts.

    ``neurons`` maps bag keys (``"P19/3"``) to knowledge neurons; keys of other relations are
    ignored. Ties are broken by lower layer, then lower index. Raises
    :class:`~kn_lens.errors.KnLensError` (a ``ValueError``) if the relation has no knowledge
    neurons.
    """
    if top < 1:
        raise KnLensError(f"top must be >= 1, got {top}")
    counts: Counter[Neuron] = Counter()
    for key, ns in neurons.items():
        if relation_of_key(key) == relation:
            counts.update({Neuron(*map(int, n)) for n in ns})
    if not counts:
        raise KnLensError(
            f"relation {relation!r} has no knowledge neurons in the given neuron sets"
        )
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].layer, kv[0].index))
    return ranked[:top]


def erase_relation(
    model: Model, neurons: Mapping[str, Sequence[Any]], relation: str, top: int = 20
) -> RowEdit:
    """Zero the value vectors of ``relation``'s ``top`` most frequent knowledge neurons.

    Returns the :class:`~kn_lens.weights.RowEdit` handle (a context manager) that restores them.
    """
    return zero_rows(model, [n for n, _ in relation_top_neurons(neurons, relation, top)])


@dataclass
class RelationScore:
    """A relation's accuracy and perplexity over its bags' prompts."""

    n_bags: int
    n_prompts: int
    accuracy: float
    ppl: float


@dataclass
class Erasure:
    """One erased relation.

    Attributes:
        erased: the zeroed neurons; counts: in how many of the relation's facts each occurs.
        after: per relation, scores with the neurons zeroed.
        random_neurons / random_after: the control (``None`` without control).
        summary: ``accuracy_before/after``, ``ppl_before/after`` of the erased relation;
            ``others_accuracy_before/after`` and ``others_ppl_before/after`` pooled over all other
            relations' prompts; ``others_mean_ppl_change`` (mean over other relations of
            after/before - 1), ``others_max_ppl_change``; and ``random_*`` counterparts.
    """

    relation: str
    n_facts_with_neurons: int
    erased: list[Neuron]
    counts: list[int]
    after: dict[str, RelationScore]
    summary: dict[str, float]
    random_neurons: list[Neuron] | None = None
    random_after: dict[str, RelationScore] | None = None


@dataclass
class EraseResult(Result):
    """Result of :func:`erase_experiment`: scores before, and after each erasure."""

    schema: ClassVar[str] = "erase"

    erase_top: int
    seed: int
    relations: list[str]
    max_bags_per_relation: int | None
    before: dict[str, RelationScore]
    erasures: list[Erasure]


class _Eval:
    """All evaluation prompts encoded once, scored per relation."""

    def __init__(self, model: Model, bags: Sequence[FactBag], batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size
        prompts, answers, rel = [], [], []
        self.n_bags: Counter[str] = Counter()
        for b in bags:
            self.n_bags[b.relation] += 1
            for p in b.prompts:
                prompts.append(p)
                answers.append(b.object)
                rel.append(b.relation)
        self.enc = encode_facts(model, prompts, answers)
        self.rel = rel
        self.relations = sorted(self.n_bags)

    def scores(self) -> dict[str, RelationScore]:
        s = score_prompts(self.model, self.enc, batch_size=self.batch_size)
        correct = s.correct
        out = {}
        for r in self.relations:
            m = torch.tensor([x == r for x in self.rel])
            out[r] = RelationScore(
                self.n_bags[r],
                int(m.sum()),
                float(correct[m].float().mean()),
                perplexity(s.gold_logp[m]),
            )
        self._last_logp, self._last_correct = s.gold_logp, correct
        return out

    def pooled_others(self, relation: str) -> tuple[float, float]:
        m = torch.tensor([x != relation for x in self.rel])
        if not m.any():
            return float("nan"), float("nan")
        return float(self._last_correct[m].float().mean()), perplexity(self._last_logp[m])


def _summary(
    rel: str,
    before: dict[str, RelationScore],
    after: dict[str, RelationScore],
    pooled_before: tuple[float, float],
    pooled_after: tuple[float, float],
    prefix: str = "",
) -> dict[str, float]:
    others = [r for r in before if r != rel]
    changes = [
        after[r].ppl / before[r].ppl - 1
        for r in others
        if math.isfinite(before[r].ppl) and before[r].ppl > 0
    ]
    p = prefix
    out = {
        f"{p}accuracy_after": after[rel].accuracy,
        f"{p}ppl_after": after[rel].ppl,
        f"{p}others_accuracy_after": pooled_after[0],
        f"{p}others_ppl_after": pooled_after[1],
        f"{p}others_mean_ppl_change": mean_or_nan(changes),
        f"{p}others_max_ppl_change": max(changes) if changes else float("nan"),
        f"{p}others_mean_accuracy_drop": mean_or_nan(
            before[r].accuracy - after[r].accuracy for r in others
        ),
    }
    if not prefix:
        out.update(
            {
                "accuracy_before": before[rel].accuracy,
                "ppl_before": before[rel].ppl,
                "others_accuracy_before": pooled_before[0],
                "others_ppl_before": pooled_before[1],
            }
        )
    return out


def erase_experiment(
    model: Model,
    bags: Sequence[FactBag],
    neurons: Mapping[str, Sequence[Any]],
    relations: Sequence[str],
    config: PaperConfig = PaperConfig(),
    *,
    max_bags_per_relation: int | None = None,
    control: bool = True,
    progress: bool = False,
) -> EraseResult:
    """Erase each of ``relations`` in turn and score every relation before and after.

    Args:
        bags: evaluation bags (all relations); objects that are not one token are skipped.
        neurons: knowledge neurons by bag key, found any way; a relation's frequent neurons are
            counted over its keys here.
        relations: relations to erase (e.g. :data:`PAPER_RELATIONS` on PARAREL).
        config: ``erase_top`` (20) and ``seed``.
        max_bags_per_relation: score only a seeded sample of this many bags per relation.
        control: also zero as many random neurons per erased relation.

    Returns:
        :class:`EraseResult`; the weights are restored after each erasure.
    """
    if not relations:
        raise KnLensError("no relations to erase")
    by_rel = bags_by_relation(model, bags)
    missing = [r for r in relations if r not in by_rel]
    if missing:
        raise KnLensError(f"relation(s) {', '.join(missing)} have no usable bags to score")
    tops = {r: relation_top_neurons(neurons, r, config.erase_top) for r in relations}
    if max_bags_per_relation is not None:
        for r in list(by_rel):
            if len(by_rel[r]) > max_bags_per_relation:
                rng = seeded_rng(config.seed, "erase-eval", r)
                by_rel[r] = sorted(
                    rng.sample(by_rel[r], max_bags_per_relation), key=lambda b: b.index
                )
    ev = _Eval(model, [b for r in sorted(by_rel) for b in by_rel[r]], config.batch_size)
    before = ev.scores()
    pooled_before = {r: ev.pooled_others(r) for r in relations}

    n_layers, d_mlp = model_shape(model)
    erasures: list[Erasure] = []
    iterator: Iterable[str] = relations
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(list(relations), desc="erase relations")
    for rel in iterator:
        top = tops[rel]
        erased = [n for n, _ in top]
        with zero_rows(model, erased):
            after = ev.scores()
            pooled_after = ev.pooled_others(rel)
        summary = _summary(rel, before, after, pooled_before[rel], pooled_after)
        rand_ns: list[Neuron] | None = None
        rand_after = None
        if control:
            rand_ns = any_layers(
                erased, n_layers, d_mlp, seeded_rng(config.seed, "erase-control", rel)
            )
            with zero_rows(model, rand_ns):
                rand_after = ev.scores()
                rand_pooled = ev.pooled_others(rel)
            summary.update(
                _summary(rel, before, rand_after, pooled_before[rel], rand_pooled, prefix="random_")
            )
        n_facts = sum(1 for k in neurons if relation_of_key(k) == rel and neurons[k])
        erasures.append(
            Erasure(rel, n_facts, erased, [c for _, c in top], after, summary, rand_ns, rand_after)
        )
    return EraseResult(
        config.erase_top, config.seed, list(relations), max_bags_per_relation, before, erasures
    )


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """The paper's erasure figures beside this run's; a relation of another fact world is matched
    to the paper's by its label (:data:`PAPER_RELATIONS`)."""
    rows = []
    labels = dig(meta, "data", "relation_labels") or {}
    by_label = {v: k for k, v in PAPER_RELATIONS.items()}
    for er in dig(result, "erasures") or []:
        rel = er.get("relation")
        pk = rel if rel in paper else by_label.get(labels.get(rel, ""))
        name = rel if pk in (None, rel) else f"{rel} (~{pk}, {labels.get(rel)})"
        for m, label in (
            ("ppl_before", "perplexity before"),
            ("ppl_after", "perplexity after"),
            ("accuracy_before", "accuracy before, %"),
            ("accuracy_after", "accuracy after, %"),
        ):
            pv, ov = dig(paper, pk, m) if pk else None, dig(er, "summary", m)
            if m.startswith("accuracy"):  # shares, in % as every share of the report
                pv, ov = percent(pv), percent(ov)
            rows.append(report_row(f"{name}: {label}", pv, ov))
        rng = dig(paper, "other_relations_ppl_change")
        change = dig(er, "summary", "others_mean_ppl_change")
        rows.append(
            report_row(
                f"{name}: other relations' perplexity change (mean)",
                f"+{rng[0]:.0%} to +{rng[1]:.0%}"
                if isinstance(rng, list) and len(rng) == 2
                else None,
                f"{change:+.1%}" if is_number(change) else None,
            )
        )
    return rows


def default_relations(relations: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    """The relations to erase when none are named: the paper's (by id, or by label in a fact world
    with other ids) among ``relations``, else all of them. ``labels``: relation id -> label."""
    chosen = [
        r for r in relations if r in PAPER_RELATIONS or labels.get(r) in PAPER_RELATIONS.values()
    ]
    return chosen or list(relations)


def run(inputs: AnalysisInputs) -> EraseResult:
    """The registry's ``erase``: :func:`erase_experiment` on ``inputs.relations`` (default:
    :func:`default_relations` of the selected facts)."""
    relations = inputs.relations
    if relations is None:
        have = list(dict.fromkeys(b.relation for b in inputs.bags))
        labels = {b.relation: b.relation_label for b in inputs.bags}
        relations = default_relations(have, labels)
    return erase_experiment(
        inputs.require_model(),
        inputs.bags,
        inputs.neurons,
        relations,
        inputs.config,
        progress=inputs.progress,
    )


ANALYSIS = Analysis(
    "erase",
    "Erasing relations (Sec. 6.2, Tab. 5)",
    run,
    PAPER,
    (plots.erase_figure,),
    report_rows,
)
