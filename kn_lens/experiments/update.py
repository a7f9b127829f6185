"""Updating facts by editing knowledge neurons' value vectors (Dai et al. 2022, section 5.1).

The paper changes a fact ``<s, r, o>`` into ``<s, r, o'>`` by moving each knowledge neuron's
value vector (row ``i`` of ``blocks[l].mlp.W_out``) away from the old answer's word embedding and
towards the new answer's:

    v_i <- v_i - lambda1 * (|v_i| / |e_o|)  * e_o
               + lambda2 * (|v_i| / |e_o'|) * e_o'

with ``|v_i|`` the norm of the original row and ``e = model.W_E[token]`` the word embeddings
(defaults ``lambda1=1``, ``lambda2=8``, :class:`~kn_lens.config.PaperConfig`). For a decoder,
``e`` is the unembedding direction ``W_U[:, token]`` of the answer's first token: a decoder's MLP
output reaches the next-token logits through the unembedding, so that is the direction that
raises a token (the model family's ``answer_direction``; for tied embeddings, as in SmolLM2, it
equals the word embedding). Top-1 success compares first tokens, and the new answer is drawn
among objects that start with another token. Neurons that serve
more than ``max_relation_share`` (10%) of the relation's facts are dropped first, since they
encode the relation rather than the fact.

:func:`update_fact` applies the rule and returns a :class:`~kn_lens.weights.RowEdit` handle (or
use it as a context manager); :func:`update_experiment` runs the paper's evaluation:

- **facts**: per relation, a seeded sample of facts the model *knows* -- the gold answer is top-1
  on at least ``known_threshold`` (default half) of the bag's prompts -- and that have knowledge
  neurons left after the share filter;
- **new answer**: a seeded choice among the other single-token objects of the same relation;
- **metrics**, over the bag's prompts (averaged per fact, then over facts):
  *success rate* -- share of prompts whose top-1 becomes the new answer;
  *change rate* -- share of the prompts that were answered correctly whose top-1 is no longer the
  old answer; *probability gain* and *rank gain* of the new answer (rank 0 = top-1, gain = rank
  before - rank after); *Delta perplexity* of the gold answers on ``ppl_bags`` (5) random other bags
  of the same relation (intra) and of other relations (inter), after - before, where perplexity
  = exp(mean NLL of the gold answer, all its tokens for a decoder) pooled over those bags' prompts;
- **control**: the same rule on as many random neurons (uniform over all layers, excluding the
  fact's knowledge neurons: :func:`kn_lens.experiments.controls.any_layers`, drawn by the fact's
  generator after its new answer and perplexity bags), on the same prompts and perplexity bags.
- **edit rules** (:mod:`kn_lens.experiments.edit_rules`): ``paper``, ``paper_scaled``,
  ``eleuther`` and ``random`` (same layers), each with efficacy, generalization, locality, the
  perplexity measures and symmetry, under ``rules`` (after the paper's metrics, which they leave
  unchanged). Symmetry asks each edit backwards, on the inverse fact's prompts where it is among
  the run's facts, else on the inverse relation's PARAREL templates (P36 <-> P1376: "Y' is the
  capital of [MASK]" -> X); ``symmetry`` says on how many facts, from which source, or why not.

Every edit is restored before the next fact. The result is a :class:`UpdateResult`, with
:data:`PAPER` holding the paper's figures for side-by-side reports.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

import kn_lens.experiments.edit_rules as edit_rules
from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag, relation_of_key
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import any_layers, seeded_rng
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.experiments.update_report import report_examples, report_rows
from kn_lens.models.family import Model, family_of
from kn_lens.neuron import Neuron, check_neurons, model_shape
from kn_lens.readout import (
    KNOWN_SHARE,
    AnswerScores,
    bags_by_relation,
    encode_facts,
    first_token,
    known_facts,
    perplexity,
    score_prompts,
)
from kn_lens.results import (
    Result,
    mean_or_nan,
)
from kn_lens.weights import RowEdit, add_to_rows, read_value_vectors

#: The paper's figures (BERT-base-cased on PARAREL; Table 4 of Dai et al. 2022).
PAPER: dict[str, Any] = {
    "success_rate": 0.344,
    "change_rate": 0.485,
    "delta_intra_ppl": 8.4,
    "delta_inter_ppl": 7.2,
    "random_success_rate": 0.0,
    "random_change_rate": 0.047,
    "note": "The paper edits facts BERT knows; editing their knowledge neurons makes the new "
    "answer top-1 on 34.4% of the prompts and changes the old answer on 48.5%, against 0.0% and "
    "4.7% for random neurons, while other facts' perplexity rises a little (Table 4).",
}


#: Facts edited per relation by default (a seeded sample of the facts the model knows).
DEFAULT_FACTS_PER_RELATION = 10


def _token(model: Model, answer: str | int, what: str) -> int:
    try:
        return first_token(model, answer)
    except ValueError as e:
        raise KnLensError(f"{what}: {e}") from None


# --------------------------------------------------------------------------------------------
# The update rule
# --------------------------------------------------------------------------------------------


def update_deltas(
    values: Float[Tensor, "neuron d_model"],
    e_old: Float[Tensor, " d_model"],
    e_new: Float[Tensor, " d_model"],
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> Float[Tensor, "neuron d_model"]:
    """The paper's change to each value vector: ``-l1 |v|/|e_old| e_old + l2 |v|/|e_new| e_new``
    (:func:`kn_lens.experiments.edit_rules.paper_deltas`)."""
    return edit_rules.paper_deltas(values, e_old, e_new, lambda1, lambda2)


def update_fact(
    model: Model,
    neurons: Iterable[Any],
    old_answer: str | int,
    new_answer: str | int,
    *,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> RowEdit:
    """Apply the paper's update rule to ``neurons``' value vectors; returns the restore handle.

    ``old_answer`` / ``new_answer`` are words (or token ids). The direction written for an answer
    is its family's (:meth:`kn_lens.models.family.Family.answer_direction`): an encoder answer is
    one token and writes its word embedding ``W_E[token]`` (the paper); a decoder answer writes the
    unembedding direction ``W_U[:, token]`` of its first token. Raises
    :class:`~kn_lens.errors.KnLensError` (a ``ValueError``) if an encoder answer is not one token,
    the two answers start with the same token, or a neuron is invalid.
    """
    old_id = _token(model, old_answer, "old answer")
    new_id = _token(model, new_answer, "new answer")
    if old_id == new_id:
        raise KnLensError(f"old and new answer start with the same token ({old_answer!r})")
    ns = check_neurons(model, neurons)
    values = read_value_vectors(model, ns)
    fam = family_of(model)
    e_old = fam.answer_direction(model, old_id).to(values)
    e_new = fam.answer_direction(model, new_id).to(values)
    deltas = update_deltas(values, e_old, e_new, lambda1, lambda2)
    return add_to_rows(model, ns, deltas)


def filter_shared_neurons(
    neurons: Mapping[str, Sequence[Any]], max_share: float = 0.1
) -> tuple[dict[str, list[Neuron]], dict[str, list[Neuron]]]:
    """Drop, per relation, the neurons found in more than ``max_share`` of its facts.

    The relation of a bag key ``"P19/3"`` is ``"P19"``; its facts are the keys of that relation in
    ``neurons``. A neuron of a single fact is always kept. Returns ``(kept, dropped)`` by key.
    """
    by_rel: dict[str, list[str]] = defaultdict(list)
    for key in neurons:
        by_rel[relation_of_key(key)].append(key)
    kept: dict[str, list[Neuron]] = {}
    dropped: dict[str, list[Neuron]] = {}
    for _rel, keys in by_rel.items():
        counts = Counter(Neuron(*map(int, n)) for k in keys for n in set(map(tuple, neurons[k])))
        limit = max(1.0, max_share * len(keys))
        for k in keys:
            ns = [Neuron(*map(int, n)) for n in neurons[k]]
            kept[k] = [n for n in ns if counts[n] <= limit]
            dropped[k] = [n for n in ns if counts[n] > limit]
    return kept, dropped


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


@dataclass
class EditMetrics:
    """One edit's effect on the edited fact and on the perplexity bags.

    Attributes:
        success_rate: share of the bag's prompts whose top-1 is the new answer after the edit.
        change_rate: share of the prompts answered correctly before whose top-1 is no longer the
            old answer after the edit.
        prob_gain: mean over prompts of p(new) after - before.
        rank_gain: mean over prompts of rank(new) before - after (0 = top-1; positive = better).
        intra_ppl_after / inter_ppl_after: perplexities after the edit.
        delta_intra_ppl / delta_inter_ppl: after - before.
        intra_ppl_change / inter_ppl_change: after / before - 1 (relative change).
    """

    success_rate: float
    change_rate: float
    prob_gain: float
    rank_gain: float
    intra_ppl_after: float
    inter_ppl_after: float
    delta_intra_ppl: float
    delta_inter_ppl: float
    intra_ppl_change: float
    inter_ppl_change: float


@dataclass
class FactUpdate:
    """One updated fact: the edit with knowledge neurons and the random-neuron control."""

    key: str
    relation: str
    subject: str
    old_answer: str
    new_answer: str
    n_prompts: int
    known_share: float  # share of the bag's prompts answered correctly before the edit
    neurons: list[Neuron]
    dropped_neurons: list[Neuron]  # removed by the max_relation_share filter
    intra_keys: list[str]
    inter_keys: list[str]
    intra_ppl_before: float
    inter_ppl_before: float
    knowledge: EditMetrics
    random_neurons: list[Neuron] | None = None
    random: EditMetrics | None = None
    rules: dict[str, dict[str, float | None]] = field(default_factory=dict)  # edit_rules metrics
    rule_info: dict[str, Any] = field(default_factory=dict)


METRICS = (
    "success_rate",
    "change_rate",
    "prob_gain",
    "rank_gain",
    "delta_intra_ppl",
    "delta_inter_ppl",
    "intra_ppl_change",
    "inter_ppl_change",
)


@dataclass
class UpdateResult(Result):
    """Result of :func:`update_experiment`.

    Attributes:
        summary: ``{"knowledge": {metric: mean over facts}, "random": {...}}`` with the metrics of
            :class:`EditMetrics` (``success_rate``, ``change_rate``, ``prob_gain``, ``rank_gain``,
            ``delta_intra_ppl``, ``delta_inter_ppl``, ``intra_ppl_change``, ``inter_ppl_change``),
            plus ``n_facts``; NaNs (e.g. no correctly answered prompt for the change rate) are
            left out of the means.
        per_relation: the same, per relation.
        facts: one :class:`FactUpdate` per edited fact.
        skipped: ``{"key", "reason"}`` for candidate facts that were not edited.
        n_candidates: per relation, facts with neurons; n_known: of those, facts the model knows.
        rules: per edit rule (:mod:`kn_lens.experiments.edit_rules`), ``n_facts`` and the mean
            edit metrics; rules_per_relation: the same per relation; symmetry: ``measured``,
            ``n_facts``, ``sources`` (how many facts' inverse prompts came from the inverse
            fact, how many from templates), ``pairs`` (relation -> inverse) and ``reason`` (why
            it was not measured).
    """

    schema: ClassVar[str] = "update"

    lambda1: float
    lambda2: float
    max_relation_share: float
    ppl_bags: int
    known_threshold: float
    facts_per_relation: int | None
    seed: int
    relations: list[str]
    n_candidates: dict[str, int]
    n_known: dict[str, int]
    summary: dict[str, dict[str, float]]
    per_relation: dict[str, dict[str, dict[str, float]]]
    facts: list[FactUpdate]
    skipped: list[dict[str, str]] = field(default_factory=list)
    rules: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rules_per_relation: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    symmetry: dict[str, Any] = field(default_factory=dict)


def _summarise(facts: Sequence[FactUpdate]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for arm in ("knowledge", "random"):
        ms = [getattr(f, arm) for f in facts if getattr(f, arm) is not None]
        if not ms:
            continue
        d: dict[str, float] = {"n_facts": float(len(ms))}
        for m in METRICS:
            d[m] = mean_or_nan(getattr(x, m) for x in ms if math.isfinite(getattr(x, m)))
        out[arm] = d
    return out


def _edit_metrics(
    before: AnswerScores,
    after: AnswerScores,
    n_fact: int,
    n_intra: int,
    old_id: int,
    new_id: int,
    intra_before: float,
    inter_before: float,
) -> EditMetrics:
    f = slice(0, n_fact)
    top_b, top_a = before.top1[f], after.top1[f]
    success = float((top_a == new_id).float().mean())
    correct = top_b == old_id
    change = float((top_a[correct] != old_id).float().mean()) if correct.any() else float("nan")
    assert before.target_logp is not None and after.target_logp is not None
    assert before.target_rank is not None and after.target_rank is not None
    prob_gain = float((after.target_logp[f].exp() - before.target_logp[f].exp()).mean())
    rank_gain = float((before.target_rank[f] - after.target_rank[f]).float().mean())
    intra_a = perplexity(after.gold_logp[n_fact : n_fact + n_intra])
    inter_a = perplexity(after.gold_logp[n_fact + n_intra :])
    d_intra, d_inter = intra_a - intra_before, inter_a - inter_before
    r_intra, r_inter = intra_a / intra_before - 1, inter_a / inter_before - 1
    return EditMetrics(
        success, change, prob_gain, rank_gain, intra_a, inter_a, d_intra, d_inter, r_intra, r_inter
    )


def known_shares(
    model: Model, bags: Sequence[FactBag], config: PaperConfig = PaperConfig()
) -> dict[str, float]:
    """Per bag key, the share of its prompts whose top-1 prediction is the bag's object
    (``config.batch_size`` prompts per forward pass; :func:`kn_lens.readout.known_facts`)."""
    return {
        k: f.top1_share for k, f in known_facts(model, bags, batch_size=config.batch_size).items()
    }


def update_experiment(
    model: Model,
    bags: Sequence[FactBag],
    neurons: Mapping[str, Sequence[Any]],
    config: PaperConfig = PaperConfig(),
    *,
    relations: Sequence[str] | None = None,
    facts_per_relation: int | None = DEFAULT_FACTS_PER_RELATION,
    known_threshold: float = KNOWN_SHARE,
    control: bool = True,
    rules: Sequence[str] = edit_rules.RULE_NAMES,
    templates: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> UpdateResult:
    """Update facts through their knowledge neurons and measure the effect (paper section 5.1).

    Args:
        bags: the fact bags: the candidates to edit and the pool for perplexity bags. Bags whose
            object is not one token are ignored.
        neurons: knowledge neurons by bag key (``"P19/3"`` -> ``[Neuron, ...]``), found any way.
            Keys without a bag in ``bags`` still count for the relation-share filter.
        config: ``lambda1``, ``lambda2``, ``max_relation_share``, ``ppl_bags``, ``seed``.
        relations: relations to edit (default: every relation with neurons and bags).
        facts_per_relation: seeded sample size per relation among the known facts (None: all).
        known_threshold: a fact is known when its gold answer is top-1 on at least this share of
            its prompts.
        control: also edit as many random neurons per fact.
        rules: also edit each fact by these rules and measure the edit metrics
            (:mod:`kn_lens.experiments.edit_rules`; ``()``: none).
        templates: PARAREL templates by relation id, for the rules' ``symmetry`` where an edited
            fact's inverse is not among ``bags`` (:func:`~kn_lens.experiments.edit_rules.
            inverse_prompts`; ``None``: only inverse facts among ``bags``).

    Returns:
        :class:`UpdateResult`. Every edit is restored before the function returns.
    """
    if not bags:
        raise KnLensError("no bags given")
    by_rel = bags_by_relation(model, bags)
    kept, dropped = filter_shared_neurons(neurons, config.max_relation_share)
    if relations is None:
        relations = sorted(
            {b.relation for rel_bags in by_rel.values() for b in rel_bags if b.key in kept}
        )
    else:
        missing = [r for r in relations if r not in by_rel]
        if missing:
            raise KnLensError(f"relation(s) {', '.join(missing)} have no usable bags")
    relations = list(relations)

    skipped: list[dict[str, str]] = []
    candidates: list[FactBag] = []
    for rel in relations:
        for b in by_rel[rel]:
            if b.key not in kept:
                continue
            if not kept[b.key]:
                skipped.append(
                    {
                        "key": b.key,
                        "reason": "no neurons left after the share filter"
                        if neurons[b.key]
                        else "no knowledge neurons",
                    }
                )
                continue
            candidates.append(b)
    if not candidates:
        raise KnLensError("no facts to edit: no bag of the chosen relations has knowledge neurons")
    shares = known_shares(model, candidates, config)
    n_candidates = {r: sum(1 for b in candidates if b.relation == r) for r in relations}
    n_known = {
        r: sum(1 for b in candidates if b.relation == r and shares[b.key] >= known_threshold)
        for r in relations
    }

    chosen: list[FactBag] = []
    for rel in relations:
        known = [b for b in candidates if b.relation == rel and shares[b.key] >= known_threshold]
        for b in candidates:
            if b.relation == rel and shares[b.key] < known_threshold:
                skipped.append(
                    {"key": b.key, "reason": f"not known (top-1 on {shares[b.key]:.0%} of prompts)"}
                )
        if facts_per_relation is not None and len(known) > facts_per_relation:
            known = sorted(
                seeded_rng(config.seed, "facts", rel).sample(known, facts_per_relation),
                key=lambda b: b.index,
            )
        chosen.extend(known)

    n_layers, d_mlp = model_shape(model)
    inverses = edit_rules.inverse_index(b for bs in by_rel.values() for b in bs)
    facts: list[FactUpdate] = []
    iterator: Iterable[FactBag] = chosen
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chosen, desc="update facts")
    for bag in iterator:
        rng = seeded_rng(config.seed, "fact", bag.key)
        objects = sorted({b.object for b in by_rel[bag.relation]} - {bag.object})
        if not objects:
            skipped.append({"key": bag.key, "reason": "no other object in the relation"})
            continue
        old_id = first_token(model, bag.object)
        objects = [o for o in objects if first_token(model, o) != old_id]
        if not objects:
            skipped.append({"key": bag.key, "reason": "no other object with another first token"})
            continue
        new = rng.choice(objects)
        new_id = first_token(model, new)
        same = [b for b in by_rel[bag.relation] if b.key != bag.key]
        other = [b for rel, bs in sorted(by_rel.items()) if rel != bag.relation for b in bs]
        intra = rng.sample(same, min(config.ppl_bags, len(same)))
        inter = rng.sample(other, min(config.ppl_bags, len(other)))
        prompts = list(bag.prompts) + [p for b in (*intra, *inter) for p in b.prompts]
        answers = [bag.object] * len(bag.prompts) + [
            b.object for b in (*intra, *inter) for _ in b.prompts
        ]
        enc = encode_facts(model, prompts, answers)
        target = torch.full((len(prompts),), new_id, dtype=torch.long)
        n_fact = len(bag.prompts)
        n_intra = sum(len(b.prompts) for b in intra)
        before = score_prompts(model, enc, target, batch_size=config.batch_size)
        intra_b = perplexity(before.gold_logp[n_fact : n_fact + n_intra])
        inter_b = perplexity(before.gold_logp[n_fact + n_intra :])

        kn = kept[bag.key]
        with update_fact(model, kn, old_id, new_id, lambda1=config.lambda1, lambda2=config.lambda2):
            after = score_prompts(model, enc, target, batch_size=config.batch_size)
        km = _edit_metrics(before, after, n_fact, n_intra, old_id, new_id, intra_b, inter_b)

        rand_ns: list[Neuron] | None = None
        rm: EditMetrics | None = None
        if control:
            rand_ns = any_layers(kn, n_layers, d_mlp, rng)
            with update_fact(
                model, rand_ns, old_id, new_id, lambda1=config.lambda1, lambda2=config.lambda2
            ):
                after_r = score_prompts(model, enc, target, batch_size=config.batch_size)
            rm = _edit_metrics(before, after_r, n_fact, n_intra, old_id, new_id, intra_b, inter_b)
        args = (model, bag, new, kn, intra, inter, inverses, config, rules)
        by_rule, info = edit_rules.evaluate_fact(*args, templates=templates)

        facts.append(
            FactUpdate(
                key=bag.key,
                relation=bag.relation,
                subject=bag.subject,
                old_answer=bag.object,
                new_answer=new,
                n_prompts=n_fact,
                known_share=shares[bag.key],
                neurons=list(kn),
                dropped_neurons=list(dropped.get(bag.key, [])),
                intra_keys=[b.key for b in intra],
                inter_keys=[b.key for b in inter],
                intra_ppl_before=intra_b,
                inter_ppl_before=inter_b,
                knowledge=km,
                random_neurons=rand_ns,
                random=rm,
                rules=by_rule,
                rule_info=info,
            )
        )

    per_relation = {rel: _summarise([f for f in facts if f.relation == rel]) for rel in relations}
    return UpdateResult(
        lambda1=config.lambda1,
        lambda2=config.lambda2,
        max_relation_share=config.max_relation_share,
        ppl_bags=config.ppl_bags,
        known_threshold=known_threshold,
        facts_per_relation=facts_per_relation,
        seed=config.seed,
        relations=relations,
        n_candidates=n_candidates,
        n_known=n_known,
        summary=_summarise(facts),
        per_relation=per_relation,
        facts=facts,
        skipped=skipped,
        rules=edit_rules.summarise_rules([f.rules for f in facts]),
        rules_per_relation={
            r: edit_rules.summarise_rules([f.rules for f in facts if f.relation == r])
            for r in relations
        },
        symmetry=edit_rules.symmetry_status(
            [f.rule_info.get("symmetry_source") for f in facts], relations, by_rel, templates
        )
        if rules
        else {},
    )


def run(inputs: AnalysisInputs) -> UpdateResult:
    """The registry's ``update``: :func:`update_experiment`, ``inputs.facts_per_relation`` facts
    per relation (default :data:`DEFAULT_FACTS_PER_RELATION`)."""
    return update_experiment(
        inputs.require_model(),
        inputs.bags,
        inputs.neurons,
        inputs.config,
        facts_per_relation=inputs.facts_per_relation or DEFAULT_FACTS_PER_RELATION,
        known_threshold=inputs.config.known_share,
        templates=inputs.templates,
        progress=inputs.progress,
    )


ANALYSIS = Analysis(
    "update",
    "Updating facts (Sec. 6.1, Tab. 4)",
    run,
    PAPER,
    (plots.update_figure, plots.update_rules_figure),
    report_rows,
    examples=report_examples,
    table=edit_rules.rules_table,
    needs_templates=edit_rules.inverse_relations,
)
