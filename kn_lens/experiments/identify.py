"""Identifying knowledge neurons, and their statistics (paper, Section 4.3 / Figure 4 / Table 1).

For every bag we attribute once (:func:`kn_lens.knowledge_neurons.score_bags`, both IG and the
activation baseline), pick the knowledge neurons of each relation with the adaptive sharing
threshold (:func:`kn_lens.knowledge_neurons.identify_relation`: IG at ``t = 0.2``; baseline on raw
activations at ``t = 0.5``), and report, per relation and overall, for ours and the baseline:

- **neurons per fact**: the mean number of knowledge neurons per fact (facts with none count as 0);
- **overlap, same relation**: the mean number of neurons shared by two facts of the same
  relation, over all unordered pairs of its facts;
- **overlap, other relations**: the mean number shared by a fact and each of
  ``config.random_other_facts`` (100) facts drawn at random from other relations (a fact's sample
  is seeded by ``config.seed`` and its key, so it does not depend on the order of the bags; with
  fewer other facts than that, all of them are used);
- **layer distribution**: the share (%) of knowledge neurons in each layer, counting a neuron once
  per fact it belongs to.

Overall values pool all pairs (overlaps), all facts (neurons per fact) and all (fact, neuron)
memberships (layers) across relations.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.knowledge_neurons import BagScores, RelationNeurons, identify_all, score_bags
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron, neurons_from_json
from kn_lens.results import ReportRow, Result, dig, mean_or_nan, report_row

#: The paper's numbers for bert-base-cased on PARAREL (Section 4.3, Table 1, Figure 4).
PAPER: dict[str, Any] = {
    "model": "bert-base-cased",
    "neurons_per_fact": {"ours": 4.13, "baseline": None},
    "overlap_same_relation": {"ours": 1.23, "baseline": None},
    "overlap_other_relations": {"ours": 0.09, "baseline": None},
    "layer_pct": None,
    "note": "The paper plots the layer distribution without numbers: most knowledge neurons lie "
    "in the topmost layers, while baseline neurons spread more evenly.",
}

# ----------------------------------------------------------------------------------------------
# Pure statistics on neuron sets
# ----------------------------------------------------------------------------------------------


def overlap_count(a: Sequence[Neuron], b: Sequence[Neuron]) -> int:
    """How many neurons two facts share."""
    return len(set(a) & set(b))


def same_relation_overlaps(neuron_lists: Sequence[Sequence[Neuron]]) -> list[int]:
    """The overlap of every unordered pair of facts (``n * (n - 1) / 2`` values)."""
    return [overlap_count(a, b) for a, b in itertools.combinations(neuron_lists, 2)]


class OtherRelationSampler:
    """Draws facts of other relations for a fact, cheaply even with many facts.

    The keys are laid out relation by relation, so "every fact outside relation r" is the flat
    list minus one contiguous block; a sample is drawn from the index range and mapped around it.
    """

    def __init__(self, keys_by_relation: Mapping[str, Sequence[str]]):
        self.flat: list[str] = []
        self.block: dict[str, tuple[int, int]] = {}
        for rel, keys in keys_by_relation.items():
            self.block[rel] = (len(self.flat), len(keys))
            self.flat.extend(keys)

    def sample(self, key: str, relation: str, n: int, seed: int) -> list[str]:
        start, size = self.block.get(relation, (len(self.flat), 0))
        m = len(self.flat) - size
        if m <= n:
            return self.flat[:start] + self.flat[start + size :]
        idx = random.Random(f"{seed}:{key}").sample(range(m), n)
        return [self.flat[i if i < start else i + size] for i in idx]


def other_relation_sample(
    keys_by_relation: Mapping[str, Sequence[str]], key: str, relation: str, n: int, seed: int
) -> list[str]:
    """``n`` keys drawn without replacement from relations other than ``relation``, seeded by
    ``seed`` and ``key`` (all of them if there are fewer)."""
    return OtherRelationSampler(keys_by_relation).sample(key, relation, n, seed)


def same_relation_overlap_sum(neuron_lists: Sequence[Sequence[Neuron]]) -> tuple[int, int]:
    """``(sum of overlaps over all unordered pairs, number of pairs)``, in time linear in the
    number of neurons: a neuron shared by ``c`` facts adds ``c (c - 1) / 2`` to the sum."""
    counts: Counter[Neuron] = Counter()
    for ns in neuron_lists:
        counts.update(set(ns))
    n = len(neuron_lists)
    return sum(c * (c - 1) // 2 for c in counts.values()), n * (n - 1) // 2


def layer_counts(neuron_lists: Sequence[Sequence[Neuron]], n_layers: int) -> list[int]:
    """How many (fact, neuron) memberships fall in each layer."""
    counts = [0] * n_layers
    for neurons in neuron_lists:
        for n in neurons:
            if not 0 <= n.layer < n_layers:
                raise KnLensError(f"neuron {n} lies outside the model's {n_layers} layers")
            counts[n.layer] += 1
    return counts


def _pct(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [100.0 * c / total if total else 0.0 for c in counts]


def _ratio(total: float | int, n: int) -> float:
    return total / n if n else math.nan


# ----------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------


@dataclass
class MethodStats:
    """Statistics of one method's knowledge neurons over a set of facts.

    Attributes:
        n_facts: facts counted.
        neurons_per_fact: mean number of knowledge neurons per fact.
        facts_without_neurons: facts with none.
        overlap_same_relation: mean shared neurons over same-relation fact pairs (NaN/null
            when there is no pair).
        n_pairs_same_relation: number of such pairs.
        overlap_other_relations: mean shared neurons between a fact and random facts of other
            relations (NaN/null when there are no other relations).
        n_pairs_other_relations: number of such pairs.
        layer_counts: per layer, (fact, neuron) memberships.
        layer_pct: per layer, % of all memberships (all 0 when there are no neurons).
        p, rounds, converged: the adaptive sharing threshold's outcome (per relation only;
            null in ``overall``).
    """

    n_facts: int
    neurons_per_fact: float
    facts_without_neurons: int
    overlap_same_relation: float
    n_pairs_same_relation: int
    overlap_other_relations: float
    n_pairs_other_relations: int
    layer_counts: list[int]
    layer_pct: list[float]
    p: float | None = None
    rounds: int | None = None
    converged: bool | None = None


@dataclass
class RelationStats:
    """``ours`` (IG) and ``baseline`` (activation) :class:`MethodStats` of one relation (or all)."""

    n_facts: int
    ours: MethodStats
    baseline: MethodStats | None


@dataclass
class IdentificationResult(Result):
    """Knowledge neurons of every fact and their statistics (schema ``"identification"``).

    Attributes:
        n_layers, d_mlp: the model's shape.
        relations: relation id -> :class:`RelationStats`.
        overall: :class:`RelationStats` pooled over all relations.
        neurons: ``{"ours": {bag key: [[layer, index], ...]}, "baseline": {...}}``; the input of
            the suppress/amplify, update and erase experiments.
        settings: the thresholds used (t, baseline_t, initial p, p_step, p_rounds,
            target_neurons, min_shared_prompts, random_other_facts, seed, steps).
    """

    schema = "identify"

    n_layers: int
    d_mlp: int
    relations: dict[str, RelationStats]
    overall: RelationStats
    neurons: dict[str, dict[str, list[Neuron]]]
    settings: dict[str, Any] = field(default_factory=dict)


def neurons_from_result(
    result: IdentificationResult | Mapping[str, Any], which: str = "ours"
) -> dict[str, list[Neuron]]:
    """Bag key -> knowledge neurons, from an :class:`IdentificationResult` or its dict form.

    ``which`` is ``"ours"`` or ``"baseline"``.
    """
    neurons = result.neurons if isinstance(result, IdentificationResult) else result["neurons"]
    if which not in neurons:
        raise KnLensError(f"no {which!r} neurons in the result (has {list(neurons)})")
    return {
        k: neurons_from_json(v, f"identify result: {which} neurons of {k}")
        for k, v in neurons[which].items()
    }


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def _method_stats(
    keys: Sequence[str],
    neurons: Mapping[str, Sequence[Neuron]],
    relation_of: Mapping[str, str],
    keys_by_relation: Mapping[str, Sequence[str]],
    sampler: OtherRelationSampler,
    n_layers: int,
    config: PaperConfig,
    rel_neurons: RelationNeurons | None = None,
) -> tuple[MethodStats, tuple[int, int], tuple[int, int]]:
    lists = [list(neurons.get(k, [])) for k in keys]
    same_sum, same_n = 0, 0
    for rel in dict.fromkeys(relation_of[k] for k in keys):
        a, b = same_relation_overlap_sum([neurons.get(k, []) for k in keys_by_relation[rel]])
        same_sum, same_n = same_sum + a, same_n + b
    other: list[int] = []
    for k in keys:
        mine = set(neurons.get(k, []))
        for o in sampler.sample(k, relation_of[k], config.random_other_facts, config.seed):
            other.append(len(mine.intersection(neurons.get(o, []))))
    counts = layer_counts(lists, n_layers)
    stats = MethodStats(
        n_facts=len(keys),
        neurons_per_fact=mean_or_nan([len(x) for x in lists]),
        facts_without_neurons=sum(1 for x in lists if not x),
        overlap_same_relation=same_sum / same_n if same_n else math.nan,
        n_pairs_same_relation=same_n,
        overlap_other_relations=mean_or_nan(other),
        n_pairs_other_relations=len(other),
        layer_counts=counts,
        layer_pct=_pct(counts),
        p=rel_neurons.p if rel_neurons else None,
        rounds=rel_neurons.rounds if rel_neurons else None,
        converged=rel_neurons.converged if rel_neurons else None,
    )
    return stats, (same_sum, same_n), (sum(other), len(other))


def identification_from_neurons(
    ours: Mapping[str, RelationNeurons],
    baseline: Mapping[str, RelationNeurons] | None,
    *,
    n_layers: int,
    d_mlp: int,
    config: PaperConfig = PaperConfig(),
) -> IdentificationResult:
    """Statistics of already identified neurons (relation id -> :class:`RelationNeurons`)."""
    keys_by_relation = {rel: list(rn.neurons) for rel, rn in ours.items()}
    relation_of = {k: rel for rel, ks in keys_by_relation.items() for k in ks}
    if not relation_of:
        raise KnLensError("no facts to analyse")
    methods: dict[str, Mapping[str, RelationNeurons]] = {"ours": ours}
    if baseline is not None:
        missing = set(ours) ^ set(baseline)
        if missing:
            raise KnLensError(f"ours and baseline cover different relations: {sorted(missing)}")
        methods["baseline"] = baseline
    flat = {
        m: {k: v for rn in rns.values() for k, v in rn.neurons.items()}
        for m, rns in methods.items()
    }
    relations: dict[str, RelationStats] = {}
    sampler = OtherRelationSampler(keys_by_relation)
    all_same = {m: [0, 0] for m in methods}  # [sum of overlaps, pairs]
    all_other = {m: [0, 0] for m in methods}
    for rel, keys in keys_by_relation.items():
        per: dict[str, MethodStats] = {}
        for m, rns in methods.items():
            per[m], same, other = _method_stats(
                keys, flat[m], relation_of, keys_by_relation, sampler, n_layers, config, rns[rel]
            )
            for acc, (a, b) in ((all_same[m], same), (all_other[m], other)):
                acc[0] += a
                acc[1] += b
        relations[rel] = RelationStats(len(keys), per["ours"], per.get("baseline"))
    overall_per: dict[str, MethodStats] = {}
    all_keys = list(relation_of)
    for m in methods:
        lists = [flat[m].get(k, []) for k in all_keys]
        counts = layer_counts(lists, n_layers)
        overall_per[m] = MethodStats(
            n_facts=len(all_keys),
            neurons_per_fact=mean_or_nan([len(x) for x in lists]),
            facts_without_neurons=sum(1 for x in lists if not x),
            overlap_same_relation=_ratio(*all_same[m]),
            n_pairs_same_relation=all_same[m][1],
            overlap_other_relations=_ratio(*all_other[m]),
            n_pairs_other_relations=all_other[m][1],
            layer_counts=counts,
            layer_pct=_pct(counts),
        )
    overall = RelationStats(len(all_keys), overall_per["ours"], overall_per.get("baseline"))
    settings = {
        k: getattr(config, k)
        for k in (
            "t",
            "baseline_t",
            "p",
            "p_step",
            "p_rounds",
            "target_neurons",
            "min_shared_prompts",
            "random_other_facts",
            "seed",
            "steps",
        )
    }
    neurons = {m: {k: list(v) for k, v in flat[m].items()} for m in methods}
    return IdentificationResult(n_layers, d_mlp, relations, overall, neurons, settings)


def identification_from_scores(
    scores: Sequence[BagScores], config: PaperConfig = PaperConfig()
) -> IdentificationResult:
    """Identify neurons (ours and, when the scores hold it, the baseline) from cached
    :class:`BagScores` and compute their statistics. No model needed, no gradients."""
    if not scores:
        raise KnLensError("no bag scores given")
    shapes = {(s.n_layers, s.d_mlp) for s in scores}
    if len(shapes) != 1:
        raise KnLensError(f"bag scores come from models of different shapes: {sorted(shapes)}")
    n_layers, d_mlp = shapes.pop()
    ours = identify_all(scores, config, config.method)
    has_base = all("activation" in s.scores for s in scores)
    base = identify_all(scores, config, "activation") if has_base else None
    return identification_from_neurons(ours, base, n_layers=n_layers, d_mlp=d_mlp, config=config)


def identification(
    model: Model,
    bags: Sequence[FactBag],
    config: PaperConfig = PaperConfig(),
    *,
    scores: Sequence[BagScores] | None = None,
    progress: bool = False,
) -> IdentificationResult:
    """The whole identification experiment: attribute each bag once (unless ``scores`` are given),
    identify ours and baseline neurons per relation, and compute the statistics."""
    if scores is None:
        scores = score_bags(model, bags, config, progress=progress)
    else:
        have = {s.key for s in scores}
        missing = [b.key for b in bags if b.key not in have]
        if missing:
            raise KnLensError(f"no scores for bag(s) {', '.join(missing[:5])}")
        wanted = {b.key for b in bags}
        scores = [s for s in scores if s.key in wanted]
    return identification_from_scores(scores, config)


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """The paper's identification figures beside this run's (the report's table)."""
    rows = []
    for key, label in (
        ("neurons_per_fact", "knowledge neurons per fact"),
        ("overlap_same_relation", "shared neurons, same relation"),
        ("overlap_other_relations", "shared neurons, other relations"),
    ):
        for who in ("ours", "baseline"):
            rows.append(
                report_row(
                    f"{label} ({who})", dig(paper, key, who), dig(result, "overall", who, key)
                )
            )
    for who in ("ours", "baseline"):
        pct = dig(result, "overall", who, "layer_pct")
        if isinstance(pct, list) and pct:
            top = max(1, len(pct) // 3)
            rows.append(
                report_row(
                    f"% of neurons in the top {top} of {len(pct)} layers ({who})",
                    "most" if who == "ours" else None,
                    sum(pct[-top:]),
                )
            )
    return rows


def report_table(
    result: Mapping[str, Any], meta: Mapping[str, Any]
) -> tuple[list[str], list[list[Any]]]:
    """The report's per-relation table: facts, the adaptive p and neurons per fact (ours and
    the baseline). Returns ``(header, rows)``."""
    header = [
        "relation",
        "label",
        "facts",
        "p (ours)",
        "neurons/fact (ours)",
        "p (baseline)",
        "neurons/fact (baseline)",
    ]
    rels = dig(result, "relations")
    if not isinstance(rels, Mapping):
        return header, []
    labels = dig(meta, "data", "relation_labels") or {}
    rows = [
        [
            rel,
            labels.get(rel, ""),
            dig(st, "n_facts"),
            dig(st, "ours", "p"),
            dig(st, "ours", "neurons_per_fact"),
            dig(st, "baseline", "p"),
            dig(st, "baseline", "neurons_per_fact"),
        ]
        for rel, st in rels.items()
    ]
    return header, rows


def run(inputs: AnalysisInputs) -> IdentificationResult:
    """The registry's ``identify``: :func:`identification_from_scores` on the stored scores."""
    return identification_from_scores(inputs.scores, inputs.config)


ANALYSIS = Analysis(
    "identify",
    "Identifying knowledge neurons (Sec. 4, Fig. 3, Tab. 1)",
    run,
    PAPER,
    (plots.layer_distribution_figure,),
    report_rows,
    table=report_table,
)
