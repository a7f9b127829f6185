"""Edit rules and edit metrics of update (kn_lens.experiments.edit_rules)."""

from __future__ import annotations

import math

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.data import Fact, FactBag
from kn_lens.experiments.edit_rules import (
    RULE_METRICS,
    RULE_NAMES,
    apply_rule,
    edit_prompt_split,
    eleuther_deltas,
    inverse_index,
    inverse_prompts,
    inverse_relations,
    paper_deltas,
    rules_table,
    scaled_deltas,
)
from kn_lens.experiments.update import update_experiment
from kn_lens.neuron import Neuron
from kn_lens.prompts import answer_token_id
from kn_lens.readout import encode_facts, score_prompts
from kn_lens.weights import same_bits
from tests.experiments.conftest import one_thread

NS = [Neuron(0, 5), Neuron(1, 9), Neuron(1, 60)]


def _w_outs(model) -> list[torch.Tensor]:
    return [b.mlp.W_out.detach().clone() for b in model.blocks]


def _assert_bit_identical(model, before) -> None:
    rows = zip(model.blocks, before, strict=True)
    assert all(same_bits(b.mlp.W_out.detach(), w) for b, w in rows)


def test_rule_deltas_follow_their_formulas():
    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # row norms 5 and 2
    e_old, e_new = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.5])
    scaled = scaled_deltas(v, e_old, e_new, lambda1=1.0, lambda2=8.0)
    # |v| (-1 ê_old + 8 ê_new) with ê_old = (1, 0), ê_new = (0, 1)
    torch.testing.assert_close(scaled, torch.tensor([[-5.0, 40.0], [-2.0, 16.0]]))
    torch.testing.assert_close(scaled, paper_deltas(v, e_old, e_new, 1.0, 8.0))
    # each term is lambda row norms long: with lambda1 = 0 the change is 8 |v| long
    only_new = scaled_deltas(v, e_old, e_new, lambda1=0.0, lambda2=8.0)
    torch.testing.assert_close(only_new.norm(dim=-1), 8.0 * v.norm(dim=-1))
    torch.testing.assert_close(
        eleuther_deltas(v, e_old, e_new), torch.tensor([[-4.0, 1.0], [-4.0, 1.0]])
    )


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_apply_rule_edits_only_the_rows_and_restores_bit_identically(tiny_model, rule):
    before = _w_outs(tiny_model)
    old, new = answer_token_id(tiny_model, "Paris"), answer_token_id(tiny_model, "London")
    with apply_rule(tiny_model, rule, NS, old, new, PaperConfig()) as h:
        assert h.neurons == tuple(NS)
        changed = {
            Neuron(layer, i)
            for layer, b in enumerate(tiny_model.blocks)
            for i in range(b.mlp.W_out.shape[0])
            if not torch.equal(b.mlp.W_out[i], before[layer][i])
        }
        assert changed == set(NS)
    _assert_bit_identical(tiny_model, before)


def test_paper_scaled_row_update_has_the_documented_norm(tiny_model):
    old, new = answer_token_id(tiny_model, "Paris"), answer_token_id(tiny_model, "London")
    W_E = tiny_model.W_E.detach()
    u_old, u_new = W_E[old] / W_E[old].norm(), W_E[new] / W_E[new].norm()
    before = _w_outs(tiny_model)
    cfg = PaperConfig(lambda1=1.0, lambda2=8.0)
    with apply_rule(tiny_model, "paper_scaled", NS, old, new, cfg):
        for n in NS:
            v = before[n.layer][n.index]
            delta = tiny_model.blocks[n.layer].mlp.W_out.detach()[n.index] - v
            # delta = |v| (-1 ê_old + 8 ê_new): its parts along ê_new and ê_old are 8|v| and -|v|
            expected = v.norm() * (-1.0 * u_old + 8.0 * u_new)
            torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(delta.norm(), expected.norm(), rtol=1e-4, atol=1e-5)
    with apply_rule(tiny_model, "paper_scaled", NS, old, new, cfg.with_(lambda1=0.0)):
        for n in NS:
            v = before[n.layer][n.index]
            delta = tiny_model.blocks[n.layer].mlp.W_out.detach()[n.index] - v
            torch.testing.assert_close(delta.norm(), 8.0 * v.norm(), rtol=1e-4, atol=1e-5)
    _assert_bit_identical(tiny_model, before)


def test_edit_prompt_split_held_out_or_seeded_half():
    fact = Fact("Zor", "P1", "P1", "N-1", "Paris")
    prompts = tuple(f"[X] p{i} [MASK] .".replace("[X]", "Zor") for i in range(5))
    held = FactBag(fact, prompts, held_out=("Zor h [MASK] .",))
    assert edit_prompt_split(held, 0) == (list(prompts), ["Zor h [MASK] ."], "held_out")
    edited, other, kind = edit_prompt_split(FactBag(fact, prompts), 0)
    assert kind == "split" and len(edited) == 3 and len(other) == 2
    assert sorted(edited + other) == sorted(prompts)
    assert edit_prompt_split(FactBag(fact, prompts), 0)[0] == edited  # seeded


# --------------------------------------------------------------------------------------------
# The default model (skipped when kn_lens/default_model is absent)
# --------------------------------------------------------------------------------------------


def test_default_model_every_rule_has_every_metric(default_kn):
    model, bags, neurons_of = default_kn
    neurons = neurons_of("W01")
    before = _w_outs(model)
    with one_thread():
        res = update_experiment(
            model, bags, neurons, PaperConfig(ppl_bags=2), relations=["W01"], facts_per_relation=2
        )
    _assert_bit_identical(model, before)
    d = res.to_dict()
    assert list(d["rules"]) == list(RULE_NAMES)
    for rule in RULE_NAMES:
        r = d["rules"][rule]
        assert r["n_facts"] == 2
        assert set(RULE_METRICS) <= set(r)
        for m in ("efficacy", "generalization", "locality_same_relation"):
            assert 0.0 <= r[m] <= 100.0
        assert math.isfinite(r["delta_intra_ppl"]) and math.isfinite(r["inter_ppl_change"])
        assert r["symmetry"] is None and r["n_symmetry_facts"] == 0
    # the built-in world has no inverse pair: symmetry is absent, with the reason
    assert d["symmetry"]["measured"] is False and "no edited relation" in d["symmetry"]["reason"]
    # random neurons in the same layers do (next to) nothing
    assert d["rules"]["random"]["efficacy"] <= 5.0
    # efficacy is on the prompts the neurons were found on: the paper rule's success rate, in %
    assert d["rules"]["paper"]["efficacy"] == pytest.approx(
        100 * d["summary"]["knowledge"]["success_rate"], abs=1e-6
    )
    for f in d["facts"]:
        assert f["rule_info"]["generalization_prompts"] == "held_out"
        assert len(f["rule_info"]["random_neurons"]) == len(f["neurons"])
        layers = sorted(n[0] for n in f["neurons"])
        assert sorted(n[0] for n in f["rule_info"]["random_neurons"]) == layers
    header, rows = rules_table(d, {})
    assert [r[0] for r in rows[: len(RULE_NAMES)]] == list(RULE_NAMES)
    assert rows[-1][0].startswith("symmetry") and len(rows[-1]) == len(header)


def _capital_bags() -> list[FactBag]:
    """P36 (capital) and its inverse P1376 (capital of), subject and object swapped."""
    pairs = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome")]
    t36 = ("The capital of [X] is [Y] .", "[X] has its capital in [Y] .")
    t1376 = ("[X] is the capital of [Y] .", "[X] is the capital city of [Y] .")
    bags = []
    for rel, temps, rows in (("P36", t36, pairs), ("P1376", t1376, [(o, s) for s, o in pairs])):
        for i, (s, o) in enumerate(rows):
            prompts = tuple(t.replace("[X]", s).replace("[Y]", "[MASK]") for t in temps)
            bags.append(FactBag(Fact(s, rel, rel, "1-1", o), prompts, index=i))
    return bags


def test_default_model_symmetry_is_measured_on_an_inverse_pair(default_kn):
    model, _, _ = default_kn
    bags = _capital_bags()
    neurons = {b.key: [Neuron(2, 10 + b.index), Neuron(3, 20 + b.index)] for b in bags}
    before = _w_outs(model)
    with one_thread():
        res = update_experiment(
            model,
            bags,
            neurons,
            PaperConfig(ppl_bags=1, max_relation_share=1.0),
            relations=["P36"],
            known_threshold=0.0,
        )
    _assert_bit_identical(model, before)
    d = res.to_dict()
    assert d["symmetry"]["measured"] is True and d["symmetry"]["n_facts"] == 3
    assert d["symmetry"]["pairs"] == ["P36->P1376"]
    for f in d["facts"]:
        assert f["rule_info"]["inverse_key"].startswith("P1376/")
        assert f["rule_info"]["generalization_prompts"] == "split"
        for rule in RULE_NAMES:
            assert 0.0 <= f["rules"][rule]["symmetry"] <= 100.0
    assert all(d["rules"][r]["n_symmetry_facts"] == 3 for r in RULE_NAMES)


#: P1376's templates as PARAREL writes them ([X] the city, [Y] the country), one with [Y] first.
T1376 = ("[X] is the capital of [Y] .", "the capital of [Y] is [X] .", "[X] , the capital of [Y] .")


def test_inverse_prompts_come_from_the_inverse_fact_else_from_templates(default_kn):
    model, _, _ = default_kn
    bags = _capital_bags()
    p36 = [b for b in bags if b.relation == "P36"]
    france = p36[0]  # France -> Paris, edited to Rome
    assert inverse_relations(["P36", "W01", "P47"]) == ["P1376", "P47"]
    # the inverse fact (Paris is the capital of France) is among the facts: its prompts, Paris->Rome
    prompts, source, key = inverse_prompts(
        model, france, "Rome", inverse_index(bags), {"P1376": T1376}
    )
    assert source == "fact" and key == "P1376/0"
    assert prompts == ["Rome is the capital of [MASK] .", "Rome is the capital city of [MASK] ."]
    # without it: the inverse relation's templates, [X] -> Rome, every one (an encoder reads all)
    prompts, source, key = inverse_prompts(
        model, france, "Rome", inverse_index(p36), {"P1376": T1376}
    )
    assert source == "templates" and key is None
    assert prompts == [t.replace("[X]", "Rome").replace("[Y]", "[MASK]") for t in T1376]
    # neither: nothing, and a relation without a known inverse never has any
    assert inverse_prompts(model, france, "Rome", inverse_index(p36), {}) == ([], None, None)
    w01 = FactBag(Fact("France", "W01", "W01", "N-1", "Paris"), ("[MASK] is in France .",))
    assert inverse_prompts(model, w01, "Rome", {}, {"P1376": T1376}) == ([], None, None)


def test_default_model_symmetry_from_templates_when_the_inverse_fact_is_absent(default_kn):
    model, _, _ = default_kn
    bags = [b for b in _capital_bags() if b.relation == "P36"]
    neurons = {b.key: [Neuron(2, 10 + b.index), Neuron(3, 20 + b.index)] for b in bags}
    cfg = PaperConfig(ppl_bags=1, max_relation_share=1.0)
    kw = dict(relations=["P36"], known_threshold=0.0, control=False)
    with one_thread():
        without = update_experiment(model, bags, neurons, cfg, **kw).to_dict()
        res = update_experiment(model, bags, neurons, cfg, templates={"P1376": T1376}, **kw)
    # no inverse fact and no templates: not measured, and the reason says what would give it
    sym = without["symmetry"]
    assert sym["measured"] is False and "PARAREL templates of P1376" in sym["reason"]
    d = res.to_dict()
    assert d["symmetry"]["measured"] is True and d["symmetry"]["n_facts"] == 3
    assert d["symmetry"]["sources"] == {"fact": 0, "templates": 3}
    for f in d["facts"]:
        info = f["rule_info"]
        assert info["symmetry_source"] == "templates" and info["inverse_key"] is None
        assert info["symmetry_prompts"][0] == f"{f['new_answer']} is the capital of [MASK] ."
        for rule in RULE_NAMES:
            assert 0.0 <= f["rules"][rule]["symmetry"] <= 100.0
            assert 0.0 <= f["rules"][rule]["symmetry_before"] <= 100.0
    assert all(d["rules"][r]["n_symmetry_facts"] == 3 for r in RULE_NAMES)
    # the log-probability gain of s on the inverse prompts, recomputed around the paper's edit
    f, bag = d["facts"][0], bags[0]
    prompts = f["rule_info"]["symmetry_prompts"]
    enc = encode_facts(model, prompts, [bag.subject] * len(prompts))
    old, new = answer_token_id(model, bag.object), answer_token_id(model, f["new_answer"])
    before = score_prompts(model, enc).gold_logp
    with apply_rule(model, "paper", neurons[bag.key], old, new, cfg):
        after = score_prompts(model, enc).gold_logp
    gain = f["rules"]["paper"]["symmetry_logp_gain"]
    assert gain == pytest.approx(float((after - before).mean()), abs=1e-5) and gain != 0.0


def test_decoder_rules_and_symmetry(tmp_path):
    """A tiny random Llama-style decoder: every rule runs through the unembedding direction, the
    inverse prompts are prefixes, and W_out comes back bit for bit (the numbers mean nothing)."""
    from kn_lens import load_model
    from tests.models.conftest import make_decoder_checkpoint

    model = load_model(make_decoder_checkpoint(tmp_path / "llama", "llama"), device="cpu")
    pairs = [("France", "Paris"), ("Japan", "Tokyo")]
    t36 = ("the capital of [X] is [MASK] .", "[X] capital city is [MASK] .")
    t1376 = ("[X] is the capital of [MASK] .", "[X] is the capital city of [MASK] .")
    bags = []
    for rel, temps, rows in (("P36", t36, pairs), ("P1376", t1376, [(o, s) for s, o in pairs])):
        for i, (s, o) in enumerate(rows):
            prompts = tuple(t.replace("[X]", s) for t in temps)
            held = (f"the city of {s} is [MASK] .",)
            bags.append(FactBag(Fact(s, rel, rel, "1-1", o), prompts, index=i, held_out=held))
    neurons = {b.key: [Neuron(0, 1 + b.index), Neuron(1, 3)] for b in bags}
    before = _w_outs(model)
    cfg = PaperConfig(ppl_bags=1, max_relation_share=1.0)
    res = update_experiment(model, bags, neurons, cfg, relations=["P36"], known_threshold=0.0)
    _assert_bit_identical(model, before)
    d = res.to_dict()
    assert d["symmetry"]["measured"] is True and d["symmetry"]["n_facts"] == 2
    assert list(d["rules"]) == list(RULE_NAMES)
    for f in d["facts"]:
        assert f["rule_info"]["generalization_prompts"] == "held_out"
        assert set(f["rules"]) == set(RULE_NAMES)
    # from templates, a decoder reads the text before the answer and drops the template whose
    # answer ([Y]) comes before the subject ([X])
    p36 = [b for b in bags if b.relation == "P36"]
    prompts, source, _ = inverse_prompts(model, p36[0], "Tokyo", {}, {"P1376": T1376})
    assert source == "templates"
    assert prompts == ["Tokyo is the capital of", "Tokyo , the capital of"]
    res = update_experiment(
        model, p36, neurons, cfg, relations=["P36"], known_threshold=0.0, templates={"P1376": T1376}
    )
    _assert_bit_identical(model, before)
    d = res.to_dict()
    assert d["symmetry"]["sources"] == {"fact": 0, "templates": 2}


def test_unknown_rule_fails_clearly_and_changes_nothing(tiny_model):
    before = _w_outs(tiny_model)
    with pytest.raises(ValueError, match="unknown edit rule 'rome'"):
        apply_rule(tiny_model, "rome", NS, 1, 2)
    _assert_bit_identical(tiny_model, before)
