"""Edit rules and edit metrics of ``update`` (the rules x metrics comparison of issue 22).

:func:`kn_lens.experiments.update.update_experiment` edits each chosen fact ``<s, r, o>`` into
``<s, r, o'>`` with every rule of :data:`RULE_NAMES`, one at a time, restoring the rows exactly
(:class:`kn_lens.weights.RowEdit`) after each. ``e(t)`` below is the family's answer direction of
token ``t`` (``answer_direction``: the word embedding ``W_E[t]`` of an encoder, the unembedding
column ``W_U[:, t]`` of a decoder), ``v`` the original ``W_out`` row of an edited neuron,
``ê = e / |e|`` and ``λ1``, ``λ2`` the run's ``PaperConfig.lambda1`` / ``lambda2`` (1 and 8).

Rules (what each edited row ``v`` gets added):

- ``paper``: ``- λ1 |v|/|e(o)| e(o) + λ2 |v|/|e(o')| e(o')`` on the fact's knowledge neurons
  (after the share filter): exactly ``update``'s edit (:func:`kn_lens.experiments.update.
  update_fact`), which follows the authors' released script (``6_edit_knowledge_sampled.py``,
  ``norm_lambda1`` / ``norm_lambda2``): each term is already scaled to the row's norm.
- ``paper_scaled``: ``|v| (- λ1 ê(o) + λ2 ê(o'))``: the same direction with each term's length
  set to ``λ |v|``, so that λ counts row norms and means the same in every model. Computed on its
  own (unit vectors first), it equals ``paper`` up to rounding, because kn_lens' ``paper`` rule
  already scales to the row norm (the paper's *text* adds raw embeddings; its code does not).
- ``eleuther``: the EleutherAI ``knowledge-neurons`` package's ``edit_knowledge`` (mode "edit"),
  in our words: the old token is the model's top-1 prediction on the edited prompt before the
  edit (here: the first edited prompt), and every knowledge neuron's output-weight row gets
  ``- 2 e(old) + 2 e(o')``: the raw word embeddings, no norm scaling, both factors fixed at 2
  (:data:`ELEUTHER_LAMBDA`). That package edits BERT only; for a decoder we write the family's
  answer direction (with tied embeddings, as in SmolLM2, the same vector).
- ``random``: the ``paper`` rule on as many random neurons in the same layers as the knowledge
  neurons (:func:`kn_lens.experiments.controls.same_layers`, generator
  ``seeded_rng(seed, "update-rule-random", key)``). ``update``'s older control, ``random`` in
  ``summary``, draws uniformly over all layers instead.

Metrics (per fact, then the mean over facts; shares in %):

- ``efficacy``: share of the *edited prompts* whose top-1 token is the new answer's first token
  after the edit; ``generalization``: the same on the *other prompts*. The edited prompts are the
  bag's prompts, the ones its knowledge neurons were found on (``bag.prompts``); the other prompts
  are the bag's held-out paraphrases (``bag.held_out``, never seen in training on the built-in
  world). A bag without held-out prompts (PARAREL) is split instead: a seeded shuffle
  (``seeded_rng(seed, "update-split", key)``) gives the first ``ceil(n/2)`` prompts to efficacy
  and the rest to generalization (its neurons were then found on all ``n``, so generalization
  measures paraphrase consistency rather than held-out prompts); ``rule_info`` records which.
- ``locality_same_relation`` / ``locality_other_relations``: share of the prompts of the fact's
  perplexity bags (``ppl_bags`` other facts of the same relation / of other relations, the
  ``intra_keys`` / ``inter_keys`` of ``update``) whose top-1 token is the same after the edit as
  before.
- ``delta_intra_ppl``, ``delta_inter_ppl`` (after - before) and ``intra_ppl_change``,
  ``inter_ppl_change`` (after / before - 1): ``update``'s perplexity measures on those bags.
- ``symmetry`` (Niu et al. 2024): does "the capital of X is now Y'" carry over to "Y' is the
  capital of [MASK]" -> X? The share of the fact's *inverse prompts* whose top-1 token is ``s``'s
  first token after the edit (``symmetry_before``: the same before it). The inverse prompts
  (:func:`inverse_prompts`) come from the inverse relation (:data:`INVERSE_RELATIONS`): where the
  inverse fact is among the run's facts (a bag of that relation with subject ``o`` and object
  ``s``), its prompts with ``o`` replaced by ``o'`` (``rule_info["symmetry_source"] == "fact"``);
  otherwise the inverse relation's PARAREL templates filled with ``o'``, in the form the model
  reads them (a decoder drops templates whose answer comes before the subject; ``"templates"``).
  ``None`` where neither exists; the result's ``symmetry`` then says why.
  ``symmetry_logp_gain``: the mean over those prompts of ``log p(s | prompt)`` after the edit
  minus before it (nats; all of a decoder's answer tokens), which sees a shift that does not reach
  top-1 (a decoder often continues "Y' is the capital of" with " the").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from kn_lens.config import PaperConfig
from kn_lens.data import Fact, FactBag, fill_template
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import same_layers, seeded_rng
from kn_lens.models.family import Model, family_of
from kn_lens.neuron import Neuron, check_neurons, model_shape
from kn_lens.readout import (
    AnswerScores,
    encode_facts,
    first_token,
    perplexity,
    score_prompts,
    usable_bags,
)
from kn_lens.weights import RowEdit, add_to_rows, read_value_vectors

#: The edit rules, in report order.
RULE_NAMES: tuple[str, ...] = ("paper", "paper_scaled", "eleuther", "random")
#: The metrics of each rule (shares in %, perplexity measures as ``update``'s summary).
RULE_METRICS: tuple[str, ...] = (
    "efficacy",
    "generalization",
    "locality_same_relation",
    "locality_other_relations",
    "delta_intra_ppl",
    "delta_inter_ppl",
    "intra_ppl_change",
    "inter_ppl_change",
    "symmetry",
    "symmetry_before",
    "symmetry_logp_gain",
)
#: The EleutherAI package's fixed factor on both embeddings.
ELEUTHER_LAMBDA = 2.0
#: Relation -> its inverse (Wikidata ids as in PARAREL): P36 "capital" and P1376 "capital of";
#: P47 "shares border with", P190 "twinned administrative body" and P530 "diplomatic relation"
#: are their own inverses. The built-in world (W01-W14) has no inverse pair: no object of it is
#: also a subject.
INVERSE_RELATIONS: dict[str, str] = {
    "P36": "P1376",
    "P1376": "P36",
    "P47": "P47",
    "P190": "P190",
    "P530": "P530",
}


def paper_deltas(
    values: Float[Tensor, "neuron d_model"],
    e_old: Float[Tensor, " d_model"],
    e_new: Float[Tensor, " d_model"],
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> Float[Tensor, "neuron d_model"]:
    """The ``paper`` rule's change to each row: ``-l1 |v|/|e_old| e_old + l2 |v|/|e_new| e_new``."""
    norms = values.norm(dim=-1, keepdim=True)
    return (
        -lambda1 * norms / e_old.norm() * e_old[None] + lambda2 * norms / e_new.norm() * e_new[None]
    )


def scaled_deltas(
    values: Float[Tensor, "neuron d_model"],
    e_old: Float[Tensor, " d_model"],
    e_new: Float[Tensor, " d_model"],
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> Float[Tensor, "neuron d_model"]:
    """The ``paper_scaled`` rule's change to each row: ``|v| (-l1 ê_old + l2 ê_new)``."""
    unit_old, unit_new = e_old / e_old.norm(), e_new / e_new.norm()
    return values.norm(dim=-1, keepdim=True) * (-lambda1 * unit_old + lambda2 * unit_new)[None]


def eleuther_deltas(
    values: Float[Tensor, "neuron d_model"],
    e_old: Float[Tensor, " d_model"],
    e_new: Float[Tensor, " d_model"],
    factor: float = ELEUTHER_LAMBDA,
) -> Float[Tensor, "neuron d_model"]:
    """The ``eleuther`` rule's change to each row: ``-factor e_old + factor e_new`` (raw)."""
    return (-factor * e_old + factor * e_new)[None].expand_as(values).clone()


def apply_rule(
    model: Model,
    rule: str,
    neurons: Iterable[Any],
    old_id: int,
    new_id: int,
    config: PaperConfig = PaperConfig(),
) -> RowEdit:
    """Edit ``neurons``' rows by ``rule`` (``random`` is the ``paper`` rule: the caller picks the
    random neurons); returns the restore handle (a context manager)."""
    ns = check_neurons(model, neurons)
    values = read_value_vectors(model, ns)
    fam = family_of(model)
    e_old = fam.answer_direction(model, old_id).to(values)
    e_new = fam.answer_direction(model, new_id).to(values)
    if rule in ("paper", "random"):
        deltas = paper_deltas(values, e_old, e_new, config.lambda1, config.lambda2)
    elif rule == "paper_scaled":
        deltas = scaled_deltas(values, e_old, e_new, config.lambda1, config.lambda2)
    elif rule == "eleuther":
        deltas = eleuther_deltas(values, e_old, e_new)
    else:
        raise KnLensError(f"unknown edit rule {rule!r}; known: {', '.join(RULE_NAMES)}")
    return add_to_rows(model, ns, deltas)


def edit_prompt_split(bag: FactBag, seed: int) -> tuple[list[str], list[str], str]:
    """``(edited prompts, other prompts, "held_out" | "split")`` of ``bag`` (module docstring)."""
    if bag.held_out:
        return list(bag.prompts), list(bag.held_out), "held_out"
    order = list(bag.prompts)
    seeded_rng(seed, "update-split", bag.key).shuffle(order)
    half = (len(order) + 1) // 2
    return order[:half], order[half:], "split"


def inverse_relations(relations: Iterable[str]) -> list[str]:
    """The known inverses (:data:`INVERSE_RELATIONS`) of ``relations``, sorted: the relations whose
    templates ``update`` reads for its symmetry."""
    return sorted({INVERSE_RELATIONS[r] for r in relations if r in INVERSE_RELATIONS})


def inverse_index(bags: Iterable[FactBag]) -> dict[tuple[str, str, str], FactBag]:
    """``(relation, subject, object) -> bag`` of the bags whose relation has a known inverse."""
    return {(b.relation, b.subject, b.object): b for b in bags if b.relation in INVERSE_RELATIONS}


def inverse_prompts(
    model: Model,
    bag: FactBag,
    new_answer: str,
    inverses: Mapping[tuple[str, str, str], FactBag],
    templates: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[str], str | None, str | None]:
    """The prompts that ask the edited fact backwards (module docstring, ``symmetry``).

    Args:
        bag: the edited fact ``<s, r, o>``; ``new_answer``: ``o'``.
        inverses: :func:`inverse_index` of the run's facts.
        templates: PARAREL templates (``[X]`` subject, ``[Y]`` answer) by relation id; the
            inverse relation's are used when the inverse fact is not among the run's facts.

    Returns:
        ``(prompts, source, inverse key)``: ``source`` is ``"fact"`` (the inverse bag
        ``inverse key``'s prompts with ``o`` -> ``o'``), ``"templates"`` (the inverse relation's
        templates with ``[X]`` -> ``o'``; key ``None``) or ``None`` (no inverse prompt; ``[]``).
        The answer of every prompt is ``s``.
    """
    inv_rel = INVERSE_RELATIONS.get(bag.relation)
    if inv_rel is None:
        return [], None, None
    inv = inverses.get((inv_rel, bag.object, bag.subject))
    if inv is not None:
        prompts = [p.replace(inv.subject, new_answer) for p in inv.prompts if inv.subject in p]
        if prompts:
            return prompts, "fact", inv.key
    temps = (templates or {}).get(inv_rel) or ()
    if not temps:
        return [], None, None
    fact = Fact(new_answer, inv_rel, inv_rel, bag.relation_type, bag.subject)
    filled = tuple(dict.fromkeys(fill_template(t, new_answer) for t in temps))
    kept = usable_bags(model, [FactBag(fact, filled)]).kept
    if not kept:
        return [], None, None
    return list(kept[0].prompts), "templates", None


def _pct(mask: Tensor) -> float | None:
    return float(mask.float().mean()) * 100.0 if mask.numel() else None


def evaluate_fact(
    model: Model,
    bag: FactBag,
    new_answer: str,
    neurons: Sequence[Neuron],
    intra: Sequence[FactBag],
    inter: Sequence[FactBag],
    inverses: Mapping[tuple[str, str, str], FactBag],
    config: PaperConfig,
    rules: Sequence[str] = RULE_NAMES,
    templates: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """Every rule's metrics for one fact (module docstring), and the facts about the evaluation
    (``rule_info``: which prompts, the inverse prompts and where they come from, the random
    neurons, eleuther's old token). ``templates``: see :func:`inverse_prompts`. ``({}, {})`` when
    ``rules`` is empty."""
    if not rules:
        return {}, {}
    old_id, new_id = first_token(model, bag.object), first_token(model, new_answer)
    edited, other, kind = edit_prompt_split(bag, config.seed)
    sym, sym_source, inv_key = inverse_prompts(model, bag, new_answer, inverses, templates)
    groups = [
        (edited, [bag.object] * len(edited)),
        (other, [bag.object] * len(other)),
        ([p for b in intra for p in b.prompts], [b.object for b in intra for _ in b.prompts]),
        ([p for b in inter for p in b.prompts], [b.object for b in inter for _ in b.prompts]),
        (sym, [bag.subject] * len(sym)),
    ]
    bounds, prompts, answers = [0], [], []
    for ps, ans in groups:
        prompts += ps
        answers += ans
        bounds.append(len(prompts))
    part = [slice(bounds[k], bounds[k + 1]) for k in range(len(groups))]
    enc = encode_facts(model, prompts, answers)
    before = score_prompts(model, enc, batch_size=config.batch_size)
    d_mlp = model_shape(model)[1]
    rand = same_layers(list(neurons), d_mlp, seeded_rng(config.seed, "update-rule-random", bag.key))
    top_edited = int(before.top1[0])
    info: dict[str, Any] = {
        "generalization_prompts": kind,
        "n_edited_prompts": len(edited),
        "n_other_prompts": len(other),
        "inverse_key": inv_key,
        "symmetry_source": sym_source,
        "symmetry_prompts": sym,
        "random_neurons": rand,
        "eleuther_old_token": top_edited,
        "eleuther_old_is_gold": top_edited == old_id,
    }
    ppl_b = [perplexity(before.gold_logp[part[k]]) for k in (2, 3)]
    out: dict[str, dict[str, float | None]] = {}
    for rule in rules:
        ns = rand if rule == "random" else list(neurons)
        old = top_edited if rule == "eleuther" else old_id
        if not ns:
            continue
        with apply_rule(model, rule, ns, old, new_id, config):
            after = score_prompts(model, enc, batch_size=config.batch_size)
        out[rule] = _metrics(before, after, part, new_id, ppl_b)
    return out, info


def _metrics(
    before: AnswerScores, after: AnswerScores, part: list[slice], new_id: int, ppl_b: list[float]
) -> dict[str, float | None]:
    m: dict[str, float | None] = {
        "efficacy": _pct(after.top1[part[0]] == new_id),
        "generalization": _pct(after.top1[part[1]] == new_id),
        "locality_same_relation": _pct(after.top1[part[2]] == before.top1[part[2]]),
        "locality_other_relations": _pct(after.top1[part[3]] == before.top1[part[3]]),
    }
    for k, name in ((2, "intra"), (3, "inter")):
        a, b = perplexity(after.gold_logp[part[k]]), ppl_b[k - 2]
        m[f"delta_{name}_ppl"] = a - b if math.isfinite(a - b) else None
        m[f"{name}_ppl_change"] = a / b - 1 if math.isfinite(a / b) else None
    m["symmetry"] = _pct(after.correct[part[4]])
    m["symmetry_before"] = _pct(before.correct[part[4]])
    gain = (after.gold_logp[part[4]] - before.gold_logp[part[4]]).double()
    m["symmetry_logp_gain"] = float(gain.mean()) if gain.numel() and gain.isfinite().all() else None
    return m


def summarise_rules(
    per_fact: Sequence[Mapping[str, Mapping[str, float | None]]],
) -> dict[str, dict[str, float | None]]:
    """Per rule: ``n_facts`` and the mean of each metric over the facts where it is defined
    (``None`` where it is defined for none; ``n_symmetry_facts`` counts the facts with an
    inverse)."""
    out: dict[str, dict[str, float | None]] = {}
    for rule in RULE_NAMES:
        rows = [f[rule] for f in per_fact if rule in f]
        if not rows:
            continue
        d: dict[str, float | None] = {"n_facts": float(len(rows))}
        for m in RULE_METRICS:
            vals = [float(v) for r in rows if (v := r.get(m)) is not None and math.isfinite(v)]
            d[m] = sum(vals) / len(vals) if vals else None
        d["n_symmetry_facts"] = float(sum(1 for r in rows if r.get("symmetry") is not None))
        out[rule] = d
    return out


def symmetry_status(
    sources: Sequence[str | None],
    relations: Sequence[str],
    facts_relations: Iterable[str],
    templates: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The result's ``symmetry`` entry: on how many edited facts it was measured and where their
    inverse prompts came from (``sources``: each edited fact's ``rule_info["symmetry_source"]``),
    or why it was not measured."""
    pairs = sorted({f"{r}->{INVERSE_RELATIONS[r]}" for r in relations if r in INVERSE_RELATIONS})
    n_measured = sum(1 for s in sources if s)
    by_source = {k: sum(1 for s in sources if s == k) for k in ("fact", "templates")}
    if n_measured:
        return {
            "measured": True,
            "n_facts": n_measured,
            "sources": by_source,
            "pairs": pairs,
            "reason": None,
        }
    present = set(facts_relations)
    if not pairs:
        why = (
            "no edited relation has a known inverse (kn_lens knows "
            + ", ".join(f"{a}->{b}" for a, b in INVERSE_RELATIONS.items())
            + f"; edited: {', '.join(relations) or 'none'})"
        )
    else:
        missing = sorted({INVERSE_RELATIONS[r] for r in relations if r in INVERSE_RELATIONS})
        no_temps = [r for r in missing if not (templates or {}).get(r)]
        why = (
            "no edited fact has its inverse fact (subject and object swapped) among the run's "
            f"facts (inverse relations {', '.join(missing)}"
            + ("" if set(missing) & present else ": not in the run's facts")
            + ")"
            + (
                f", and there are no PARAREL templates of {', '.join(no_temps)} (a PARAREL "
                "--data source gives them)"
                if no_temps
                else ", and no inverse template gives a prompt the model can read"
            )
        )
    return {"measured": False, "n_facts": 0, "sources": by_source, "pairs": pairs, "reason": why}


#: The report table's columns: (metric, header).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_facts", "facts"),
    ("efficacy", "efficacy %"),
    ("generalization", "generalization %"),
    ("locality_same_relation", "locality, same relation %"),
    ("locality_other_relations", "locality, other relations %"),
    ("delta_intra_ppl", "Δ intra ppl"),
    ("delta_inter_ppl", "Δ inter ppl"),
    ("intra_ppl_change", "intra ppl change"),
    ("symmetry", "symmetry %"),
    ("symmetry_logp_gain", "Δ log p(s), inverse prompts"),
)


def rules_table(
    result: Mapping[str, Any], meta: Mapping[str, Any]
) -> tuple[list[str], list[list[Any]]]:
    """The report's rules x metrics table (registry ``table`` of ``update``)."""
    rules = result.get("rules") or {}
    rows = [
        [name, *[(rules[name] or {}).get(m) for m, _ in TABLE_COLUMNS]]
        for name in RULE_NAMES
        if name in rules
    ]
    sym = result.get("symmetry") or {}
    if rows and sym and not sym.get("measured"):
        rows.append(
            ["symmetry: not measured", *[None] * (len(TABLE_COLUMNS) - 1), sym.get("reason")]
        )
    return ["edit rule", *[h for _, h in TABLE_COLUMNS]], rows


__all__ = [
    "ELEUTHER_LAMBDA",
    "INVERSE_RELATIONS",
    "RULE_METRICS",
    "RULE_NAMES",
    "apply_rule",
    "edit_prompt_split",
    "eleuther_deltas",
    "evaluate_fact",
    "inverse_index",
    "inverse_prompts",
    "inverse_relations",
    "paper_deltas",
    "rules_table",
    "scaled_deltas",
    "summarise_rules",
    "symmetry_status",
]
