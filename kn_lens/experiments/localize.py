"""Six ways to localise a fact, compared on the same facts (beyond the paper; issue 22).

For each fact, neurons are found by six methods:

==================  ==========================================================================
method              scores
==================  ==========================================================================
ig                  the paper's integrated gradients of p(answer) (the stored scores)
activation          the paper's baseline, the raw activation (the stored scores)
grad_x_act          attribution patching, ``a * dp/da`` (one forward and one backward pass)
ig_mean_baseline    IG from the mean activation over the relation's prompts
ig_contrastive      IG of log p(answer) - mean log p(foil), foils from the same relation
random              as many random neurons from the same layers as ig's
==================  ==========================================================================

Every scored method goes through the paper's refinement: coarse neurons at ``t`` (the
activation baseline's ``baseline_t``), then the sharing threshold ``p`` that ``identify`` gave
the fact's relation (the adaptive ``p`` of its IG neurons). Where that leaves a fact no ig neuron
(the relation's ``p`` or the floor of ``min_shared_prompts`` asks more prompts than any neuron is
coarse in), the fact's ig neurons are those coarse in the most prompts
(:func:`~kn_lens.knowledge_neurons.most_shared`): the sharing threshold is lowered for that fact
just far enough to keep one. Such facts are listed in ``relaxed_facts``, flagged ``ig_relaxed``,
and counted in every mean. Then each method keeps exactly as
many neurons as ``ig`` finds for the fact, so that set size does not decide the comparison: the
refined neurons with the highest score summed over the fact's prompts, then, when refinement
leaves too few, the next highest of the rest. A method's scores are read as the run stores
``ig``'s: per prompt, the neurons scoring at least ``floor`` (0.1) times the prompt's maximum.
The mean baseline is the mean activation at the read position over every prompt of the
relation's facts in the run; the foils (``localize_foils``, 3) are other objects of the same
relation among the run's facts, drawn with a generator seeded by ``seed`` and the fact's key.

The measures, per method, are means over facts. Each suppresses the method's neurons (activation
0 at the read position, as ``modify`` does) and reads the change of the correct answer's
probability, ``100 * mean Δp / mean p``:

- ``suppress_own``: on the fact's own prompts; ``flips_own``: the share of them whose top-1
  answer changes;
- ``suppress_same_relation`` / ``suppress_other_relations``: on up to ``localize_facts`` (5) other
  facts of the same relation / of other relations (seeded samples), each with its own answer;
- ``heldout_suppress``: neurons found (the same way, the same count) on the finding half of the
  prompts (split as ``heldout`` splits them), suppressed on the held-out half;
- ``specificity``: ``suppress_same_relation - suppress_own``, the drop of the fact's own
  probability beyond the drop of its relation's other facts, in points (higher: more specific);
- ``overlap_with_ig``: the Jaccard overlap with ig's neurons; ``spearman_with_ig``: the Spearman
  correlation of the prompt-summed scores with ig's, over the neurons either keeps (the others
  count 0; not for ``random``);
- ``seconds_per_fact``: the method's attribution time per fact (the mean baseline's share
  included); the stored records keep no time, so methods read from them (``ig`` and
  ``activation``, as a run stores them) are not timed here (``settings.not_timed``). A record
  without a method's scores gets them computed, and timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import torch
from torch import Tensor

from kn_lens.attribution import attribute, attribute_facts
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import random_control, seeded_rng
from kn_lens.experiments.heldout import split_prompts
from kn_lens.experiments.localize_tools import (
    PAPER,
    fact_fingerprint,
    jaccard,
    localize_figure,
    pick_foils,
    report_rows,
    report_table,
    run_context,
    sample_bags,
    select_neurons,
    spearman,
    summed_scores,
)
from kn_lens.experiments.modify import change_pct
from kn_lens.experiments.registry import Analysis, AnalysisInputs, FactLog
from kn_lens.interventions import scaled_answer_reads
from kn_lens.knowledge_neurons import (
    BagScores,
    attribution_batch_size,
    coarse_neurons,
    coarse_threshold,
    identify_all,
    most_shared,
)
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron, model_shape
from kn_lens.readout import encode_facts
from kn_lens.results import Result, mean_or_nan, to_jsonable

#: The methods, in the report's order.
METHODS: tuple[str, ...] = (
    "ig",
    "activation",
    "grad_x_act",
    "ig_mean_baseline",
    "ig_contrastive",
    "random",
)
#: The attribution engine's method behind each scored method.
ENGINE: dict[str, str] = {
    "ig": "ig",
    "activation": "activation",
    "grad_x_act": "grad_x_act",
    "ig_mean_baseline": "ig",
    "ig_contrastive": "ig",
}
#: The measures of each method (:class:`MethodSummary`).
MEASURES: tuple[str, ...] = (
    "suppress_own",
    "suppress_same_relation",
    "suppress_other_relations",
    "flips_own",
    "heldout_suppress",
    "overlap_with_ig",
    "spearman_with_ig",
    "specificity",
    "seconds_per_fact",
)


@dataclass
class LocalizeFact:
    """One fact.

    Attributes:
        key, relation, object: the fact.
        p: the sharing threshold of its relation (identify's, for ig).
        n_neurons: how many neurons every method keeps (ig's count).
        foils: the foils of ``ig_contrastive``.
        same_keys, other_keys: the facts of the same / other relations measured.
        finding, heldout: the prompt halves of ``heldout_suppress`` (empty: fewer than 2
            prompts).
        neurons: method -> ``[[layer, index], ...]``.
        measures: method -> measure -> value (null where undefined).
        ig_relaxed: the paper's refinement left the fact no ig neuron, so its ig neurons are
            those coarse in the most prompts (see the module).
    """

    key: str
    relation: str
    object: str
    p: float
    n_neurons: int
    foils: list[str]
    same_keys: list[str]
    other_keys: list[str]
    finding: list[int]
    heldout: list[int]
    neurons: dict[str, list[tuple[int, int]]]
    measures: dict[str, dict[str, float | None]]
    ig_relaxed: bool = False


@dataclass
class MethodSummary:
    """One method's measures, means over the facts where each is defined (see the module).

    Attributes:
        n_facts: facts measured.
        neurons_per_fact: mean neurons per fact (ig's count, unless a layer ran out).
        suppress_own, suppress_same_relation, suppress_other_relations: mean Δp/p in %.
        flips_own: share of own prompts whose top-1 answer changes.
        heldout_suppress: mean Δp/p in % on held-out prompts; ``n_facts_heldout`` facts.
        overlap_with_ig: Jaccard overlap with ig's neurons.
        spearman_with_ig: Spearman correlation of the summed scores with ig's (null for random).
        specificity: ``suppress_same_relation - suppress_own``, in points.
        seconds_per_fact: attribution seconds per fact (null where not measured).
    """

    n_facts: int
    neurons_per_fact: float
    suppress_own: float
    suppress_same_relation: float
    suppress_other_relations: float
    flips_own: float
    heldout_suppress: float
    overlap_with_ig: float
    spearman_with_ig: float
    specificity: float
    seconds_per_fact: float
    n_facts_heldout: int = 0


@dataclass
class LocalizeResult(Result):
    """The localisation methods compared (schema ``"localize"``).

    Attributes:
        n_facts: facts compared.
        methods: method -> :class:`MethodSummary`.
        keys: the facts compared, in the run's order.
        relations: relation -> ``{"p", "n_facts"}``.
        facts: per fact, :class:`LocalizeFact`.
        skipped_facts: key -> why it was left out.
        relaxed_facts: the facts whose ig neurons come from the lowered sharing threshold
            (``ig_relaxed``; see the module).
        settings: t, baseline_t, steps, seed, floor, localize_facts, localize_foils, objective of
            each method, and ``not_timed`` (methods whose scores were read from the store).
    """

    schema = "localize"

    n_facts: int
    methods: dict[str, MethodSummary]
    keys: list[str]
    relations: dict[str, dict[str, Any]]
    facts: list[LocalizeFact]
    skipped_facts: dict[str, str] = field(default_factory=dict)
    relaxed_facts: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


class _Scorer:
    """The scores of one method for one fact: stored when the record holds them, else computed
    with the engine (timed)."""

    def __init__(self, model: Model, config: PaperConfig, floor: float) -> None:
        self.model, self.config, self.floor = model, config, floor
        self.rows = attribution_batch_size(model, config)

    def compute(
        self, bag: FactBag, method: str, *, baseline: Any = None, foils: Sequence[str] = ()
    ) -> tuple[BagScores, float]:
        cfg = self.config
        engine = ENGINE[method]
        objective = "logprob" if method == "ig_contrastive" else cfg.objective
        t0 = time.perf_counter()
        dense = attribute(
            self.model,
            list(bag.prompts),
            bag.object,
            steps=cfg.steps,
            method=engine,
            baseline=cfg.baseline if baseline is None else baseline,
            objective=objective,
            contrast=list(foils) if foils else None,
            batch_size=self.rows,
            dtype=cfg.dtype,
        )
        seconds = time.perf_counter() - t0
        rec = BagScores.from_tensors(bag, {engine: dense}, floor=self.floor, steps=cfg.steps)
        return rec, seconds

    def relation_mean(self, bags: Sequence[FactBag]) -> tuple[Tensor, float]:
        """The mean activation ``[layer, d_mlp]`` at the read position over every prompt of
        ``bags``, and its seconds."""
        t0 = time.perf_counter()
        acts = attribute_facts(
            self.model,
            [(list(b.prompts), b.object) for b in bags],
            method="activation",
            batch_size=self.rows,
        )
        mean = torch.cat(acts).float().mean(0)
        return mean, time.perf_counter() - t0


def _reads(
    model: Model, enc: Any, neurons: Sequence[Neuron], batch_size: int
) -> tuple[Tensor, Tensor]:
    return scaled_answer_reads(model, enc, neurons, 0.0, batch_size=batch_size)


def _group_pct(delta: Tensor, base: Tensor, spans: Sequence[tuple[int, int]]) -> float:
    """``100 * mean_f Δp_f / mean_f p_f`` over facts ``f`` (each a span of prompts)."""
    if not spans:
        return math.nan
    d = mean_or_nan(float(delta[a:b].mean()) for a, b in spans)
    p = mean_or_nan(float(base[a:b].mean()) for a, b in spans)
    return change_pct(d, p)


def _measure(
    model: Model,
    bags: Sequence[FactBag],
    bag: FactBag,
    records: dict[str, BagScores],
    seconds: dict[str, float | None],
    ig_ns: list[Neuron],
    p: float,
    foils: list[str],
    config: PaperConfig,
) -> LocalizeFact:
    """One fact's neuron sets and measures, from each method's scores (``records``)."""
    k, n, rows = len(ig_ns), len(bag.prompts), config.batch_size
    finding, held = split_prompts(n, config.seed, bag.key) if n >= 2 else ([], [])

    def pick(rec: BagScores, m: str) -> list[Neuron]:
        t = coarse_threshold(config, ENGINE[m])
        return select_neurons(rec, ENGINE[m], t, p, config.min_shared_prompts, k)

    sets: dict[str, list[Neuron]] = {}
    halves: dict[str, list[Neuron]] = {}
    for m, rec in records.items():
        sets[m] = ig_ns if m == "ig" else pick(rec, m)
        if held:  # the stored per-prompt scores of the finding half: no new attribution
            halves[m] = pick(rec.select_prompts(finding), m)
    sets["random"] = random_control(ig_ns, model_shape(model)[1], config.seed, bag.key)
    if held:
        halves["random"] = sets["random"]

    n_cap = int(config.localize_facts)
    same_pool = [b for b in bags if b.relation == bag.relation and b.key != bag.key]
    other_pool = [b for b in bags if b.relation != bag.relation]
    same = sample_bags(same_pool, n_cap, seeded_rng(config.seed, "localize-same", bag.key))
    other = sample_bags(other_pool, n_cap, seeded_rng(config.seed, "localize-other", bag.key))
    parts = [bag, *same, *other]
    spans, at = [], 0
    for b in parts:
        spans.append((at, at + len(b.prompts)))
        at += len(b.prompts)
    enc = encode_facts(
        model,
        [q for b in parts for q in b.prompts],
        [b.object for b in parts for _ in b.prompts],
    )
    base, base_top = _reads(model, enc, [], rows)
    own = slice(0, n)
    ig_sums = summed_scores(records["ig"], "ig")
    measures: dict[str, dict[str, float | None]] = {}
    for m, ns in sets.items():
        probs, top = _reads(model, enc, ns, rows)
        d = probs - base
        vals: dict[str, float] = {
            "suppress_own": change_pct(float(d[own].mean()), float(base[own].mean())),
            "suppress_same_relation": _group_pct(d, base, spans[1 : 1 + len(same)]),
            "suppress_other_relations": _group_pct(d, base, spans[1 + len(same) :]),
            "flips_own": float((top[own] != base_top[own]).float().mean()),
            "heldout_suppress": math.nan,
            "overlap_with_ig": jaccard(ns, ig_ns),
            "spearman_with_ig": math.nan,
        }
        if held:
            h_probs, _ = _reads(model, enc.select(held), halves[m], rows)
            vals["heldout_suppress"] = change_pct(
                float((h_probs - base[held]).mean()), float(base[held].mean())
            )
        if m in records:
            vals["spearman_with_ig"] = spearman(summed_scores(records[m], ENGINE[m]), ig_sums)
        vals["specificity"] = vals["suppress_same_relation"] - vals["suppress_own"]
        measures[m] = {name: _finite(v) for name, v in vals.items()}
        measures[m]["seconds_per_fact"] = seconds.get(m)
    return LocalizeFact(
        bag.key,
        bag.relation,
        bag.object,
        p,
        k,
        foils,
        [b.key for b in same],
        [b.key for b in other],
        finding,
        held,
        {m: [(x.layer, x.index) for x in ns] for m, ns in sets.items()},
        measures,
    )


def _fact_from_record(record: Mapping[str, Any]) -> LocalizeFact:
    d = dict(record["fact"])
    d["neurons"] = {m: [(int(a), int(b)) for a, b in v] for m, v in d["neurons"].items()}
    return LocalizeFact(**d)


def localize(
    model: Model,
    bags: Sequence[FactBag],
    scores: Sequence[BagScores],
    config: PaperConfig = PaperConfig(),
    *,
    keys: Iterable[str] | None = None,
    progress: bool = False,
    fact_log: FactLog | None = None,
) -> LocalizeResult:
    """Compare the localisation methods (see the module docstring).

    Args:
        model: the model.
        bags: the run's facts (the comparison groups, foils and mean baselines come from them).
        scores: their stored attribution records (``ig``, ``activation`` and ``grad_x_act``
            are computed, and timed, where a record lacks them: ``ig`` for every fact of the
            relations compared, as its adaptive ``p`` needs them all).
        keys: the facts to compare (default: every fact with ig neurons).
        fact_log: where each fact's record goes as soon as it is measured, and where a record
            of the same fact computed from the same inputs (:func:`fact_fingerprint`) is
            reused instead of measuring again; ``None``: every fact is measured.

    Facts are measured relation by relation in turn (the first fact of each relation, then
    the second, ...), so that a run stopped midway covers every relation; with
    ``config.localize_max_new`` >= 0 at most that many facts are measured anew (0: none, the
    kept records are only summarised), and the others are left out as ``not_yet_measured`` (a
    later call resumes them).
    """
    if not bags:
        raise KnLensError("no bags given")
    by_key = {s.key: s for s in scores}
    if not by_key:
        raise KnLensError("localize needs the stored attribution scores")
    n_foils = int(config.localize_foils)
    floor = max(s.floor for s in scores)
    scorer = _Scorer(model, config, floor)
    wanted = None if keys is None else set(keys)
    compared = {b.relation for b in bags if wanted is None or b.key in wanted}
    ig_records: dict[str, tuple[BagScores, float | None]] = {}
    for b in bags:
        s = by_key.get(b.key)
        if s is not None and b.relation in compared:
            ig_records[b.key] = (s, None) if "ig" in s.scores else scorer.compute(b, "ig")
    found = identify_all([r for r, _ in ig_records.values()], config, "ig")
    skipped: dict[str, str] = {}
    todo: list[FactBag] = []
    ig_neurons: dict[str, list[Neuron]] = {}
    relaxed: set[str] = set()
    for b in bags:
        if wanted is not None and b.key not in wanted:
            continue
        if b.key not in by_key:
            skipped[b.key] = "no_scores"
            continue
        ig_neurons[b.key] = list(found[b.relation].neurons.get(b.key, []))
        if not ig_neurons[b.key]:  # the paper's refinement keeps none: lower it for this fact
            ig_rec = ig_records[b.key][0]
            ig_neurons[b.key] = most_shared(
                coarse_neurons(ig_rec, coarse_threshold(config, "ig"), method="ig")
            )
            relaxed.add(b.key)
        if ig_neurons[b.key]:
            todo.append(b)
        else:
            skipped[b.key] = "no_ig_neurons"
    if not todo:
        raise KnLensError("no fact with stored scores and ig neurons to compare")
    means: dict[str, tuple[Tensor, float]] = {}
    n_in_rel = {
        r: sum(b.relation == r for b in todo) for r in dict.fromkeys(b.relation for b in todo)
    }
    context = run_context(model, bags, _settings(config, floor))
    by_rel: dict[str, list[FactBag]] = {}
    for b in todo:
        by_rel.setdefault(b.relation, []).append(b)
    order = [b for group in zip_longest(*by_rel.values()) for b in group if b is not None]
    done: dict[str, LocalizeFact] = {}
    max_new, n_new = int(config.localize_max_new), 0
    it: Iterable[FactBag] = order
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(order, desc="localize", unit="fact")
    for bag in it:
        rel = found[bag.relation]
        stored = by_key[bag.key]
        ig_ns = ig_neurons[bag.key]
        fp = fact_fingerprint(context, bag, stored, rel.p, ig_ns)
        kept = fact_log.get(bag.key, fp) if fact_log is not None else None
        if kept is not None:
            done[bag.key] = _fact_from_record(kept)
            continue
        if 0 <= max_new <= n_new:
            skipped[bag.key] = "not_yet_measured"
            continue
        if bag.relation not in means:
            means[bag.relation] = scorer.relation_mean(
                [b for b in bags if b.relation == bag.relation]
            )
        foils = pick_foils(model, bags, bag, n_foils, config.seed)
        records: dict[str, BagScores] = {"ig": ig_records[bag.key][0]}
        seconds: dict[str, float | None] = {"ig": ig_records[bag.key][1]}
        for m in ("activation", "grad_x_act"):
            if ENGINE[m] in stored.scores:
                records[m], seconds[m] = stored, None
            else:
                records[m], seconds[m] = scorer.compute(bag, m)
        mean, mean_s = means[bag.relation]
        records["ig_mean_baseline"], secs = scorer.compute(bag, "ig_mean_baseline", baseline=mean)
        seconds["ig_mean_baseline"] = secs + mean_s / n_in_rel[bag.relation]
        if foils:
            records["ig_contrastive"], seconds["ig_contrastive"] = scorer.compute(
                bag, "ig_contrastive", foils=foils
            )
        fact = _measure(model, bags, bag, records, seconds, ig_ns, rel.p, foils, config)
        fact.ig_relaxed = bag.key in relaxed
        if fact_log is not None:
            fact_log.append({"key": bag.key, "fingerprint": fp, "fact": to_jsonable(fact)})
        done[bag.key] = fact
        n_new += 1
    facts = [done[b.key] for b in todo if b.key in done]
    settings = _settings(config, floor)
    settings["not_timed"] = sorted(
        {m for f in facts for m, ms in f.measures.items() if ms.get("seconds_per_fact") is None}
        - {"random"}
    )
    return LocalizeResult(
        len(facts),
        {m: _summary(facts, m) for m in METHODS},
        [f.key for f in facts],
        {r: {"p": found[r].p, "n_facts": sum(f.relation == r for f in facts)} for r in n_in_rel},
        facts,
        skipped,
        [f.key for f in facts if f.ig_relaxed],
        settings,
    )


def _settings(config: PaperConfig, floor: float) -> dict[str, Any]:
    """The settings every fact's measures depend on (results.json ``settings``)."""
    return {
        "t": config.t,
        "baseline_t": config.baseline_t,
        "min_shared_prompts": config.min_shared_prompts,
        "steps": config.steps,
        "seed": config.seed,
        "floor": floor,
        "localize_facts": int(config.localize_facts),
        "localize_foils": int(config.localize_foils),
        "objective": {
            m: ("logprob" if m == "ig_contrastive" else config.objective) for m in ENGINE
        },
        "baseline": config.baseline,
        "dtype": config.dtype,
        "operation": "suppress",
    }


def _summary(facts: Sequence[LocalizeFact], method: str) -> MethodSummary:
    fs = [f for f in facts if method in f.measures]

    def mean(name: str) -> float:
        return mean_or_nan(v for f in fs if (v := f.measures[method].get(name)) is not None)

    return MethodSummary(
        n_facts=len(fs),
        neurons_per_fact=mean_or_nan(len(f.neurons[method]) for f in fs),
        suppress_own=mean("suppress_own"),
        suppress_same_relation=mean("suppress_same_relation"),
        suppress_other_relations=mean("suppress_other_relations"),
        flips_own=mean("flips_own"),
        heldout_suppress=mean("heldout_suppress"),
        overlap_with_ig=mean("overlap_with_ig"),
        spearman_with_ig=mean("spearman_with_ig"),
        specificity=mean("specificity"),
        seconds_per_fact=mean("seconds_per_fact"),
        n_facts_heldout=sum(f.measures[method].get("heldout_suppress") is not None for f in fs),
    )


def run(inputs: AnalysisInputs) -> LocalizeResult:
    """The registry's ``localize``: :func:`localize` on every known, identified fact (one the
    paper's refinement leaves without neurons gets the lowered threshold; see the module)."""
    return localize(
        inputs.require_model(),
        inputs.bags,
        inputs.scores,
        inputs.config,
        progress=inputs.progress,
        fact_log=inputs.fact_log,
    )


ANALYSIS = Analysis(
    "localize",
    "Six ways to localise a fact, compared (beyond the paper)",
    run,
    PAPER,
    (localize_figure,),
    report_rows,
    needs_scores=True,
    table=report_table,
    resumable=True,
)
