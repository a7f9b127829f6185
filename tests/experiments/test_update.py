"""Updating facts through knowledge neurons' value vectors (kn_lens.experiments.update)."""

from __future__ import annotations

import json

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.data import Fact, FactBag
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.update import (
    PAPER,
    UpdateResult,
    filter_shared_neurons,
    update_deltas,
    update_experiment,
    update_fact,
)
from kn_lens.neuron import Neuron
from kn_lens.prompts import answer_token_id
from tests.experiments.conftest import one_thread

TEMPLATES = {
    "P1": ["[X] was born in [Y] .", "[X] is from [Y] .", "the city of [X] is [Y] ."],
    "P2": ["[X] speaks [Y] .", "the language of [X] is [Y] ."],
}
OBJECTS = {"P1": ["Paris", "London", "Berlin", "Rome"], "P2": ["French", "English", "German"]}
SUBJECTS = ["Alice", "Bob", "Zor", "Kal", "Mur", "Zorvik"]


def tiny_bags() -> list[FactBag]:
    bags = []
    for rel, templates in TEMPLATES.items():
        for i, s in enumerate(SUBJECTS):
            o = OBJECTS[rel][i % len(OBJECTS[rel])]
            prompts = tuple(t.replace("[X]", s).replace("[Y]", "[MASK]") for t in templates)
            bags.append(FactBag(Fact(s, rel, rel, "N-1", o), prompts, index=i))
    return bags


def tiny_neurons(bags) -> dict[str, list[Neuron]]:
    return {b.key: [Neuron(k % 2, (7 * k + j) % 64) for j in range(3)] for k, b in enumerate(bags)}


def _state(model):
    """The state dict, and each W_out under its TransformerLens name (a bridge's state dict has
    the Hugging Face names)."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for layer in range(model.cfg.n_layers):
        out[f"blocks.{layer}.mlp.W_out"] = model.blocks[layer].mlp.W_out.detach().clone()
    return out


def _assert_same_state(model, before):
    after = _state(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


NS = [Neuron(0, 5), Neuron(1, 9), Neuron(1, 60)]


def test_update_rule_changes_only_chosen_rows_by_formula(tiny_model):
    before = _state(tiny_model)
    old, new = answer_token_id(tiny_model, "Paris"), answer_token_id(tiny_model, "London")
    W_E = tiny_model.W_E.detach()
    e_old, e_new = W_E[old], W_E[new]
    with update_fact(tiny_model, NS, "Paris", "London") as handle:
        assert handle.neurons == tuple(NS)
        for layer in range(tiny_model.cfg.n_layers):
            key = f"blocks.{layer}.mlp.W_out"
            w, w0 = tiny_model.blocks[layer].mlp.W_out, before[key]
            for i in range(w.shape[0]):
                if Neuron(layer, i) not in NS:
                    assert torch.equal(w[i], w0[i]), f"row {layer}/{i} changed"
                    continue
                v = w0[i]
                expected = (
                    v
                    - 1.0 * v.norm() / e_old.norm() * e_old
                    + 8.0 * v.norm() / e_new.norm() * e_new
                )
                torch.testing.assert_close(w[i], expected, rtol=1e-5, atol=1e-6)
        # every other parameter is untouched
        changed = [k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before[k])]
        w_outs = [tiny_model.blocks[layer].mlp.W_out for layer in range(2)]
        assert len(changed) == 2  # the two W_out weights (Hugging Face names on a bridge)
        assert all(
            any(tiny_model.state_dict()[k].data_ptr() == w.data_ptr() for w in w_outs)
            for k in changed
        )
    _assert_same_state(tiny_model, before)


def test_update_deltas_lambdas_scale_each_part():
    v = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    e_old, e_new = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.5])
    d = update_deltas(v, e_old, e_new, lambda1=1.0, lambda2=8.0)
    torch.testing.assert_close(d, torch.tensor([[-5.0, 40.0], [-1.0, 8.0]]))
    d2 = update_deltas(v, e_old, e_new, lambda1=2.0, lambda2=0.0)
    torch.testing.assert_close(d2, torch.tensor([[-10.0, 0.0], [-2.0, 0.0]]))


def test_update_handle_restores_state_exactly(tiny_model):
    before = _state(tiny_model)
    h = update_fact(tiny_model, NS, "French", "German", lambda1=1.0, lambda2=8.0)
    assert not torch.equal(tiny_model.blocks[0].mlp.W_out, before["blocks.0.mlp.W_out"])
    h.restore()
    _assert_same_state(tiny_model, before)


@pytest.mark.parametrize(
    "neurons, old, new, match",
    [
        (NS, "Paris", "Zorvik", r"new answer: answer 'Zorvik' is not a single vocabulary token"),
        (NS, "Zorvik", "Paris", r"old answer: .*'Zorvik'"),
        (NS, "Paris", "Paris", "same token"),
        (NS, "Paris", 10_000, "out of range"),
        ([Neuron(2, 0)], "Paris", "London", r"L2\.N0.*out of range"),
        ([Neuron(0, 64)], "Paris", "London", r"L0\.N64.*out of range"),
        ([], "Paris", "London", "empty neuron set"),
    ],
)
def test_update_bad_input_fails_clearly(tiny_model, neurons, old, new, match):
    before = _state(tiny_model)
    with pytest.raises(ValueError, match=match):
        update_fact(tiny_model, neurons, old, new)
    _assert_same_state(tiny_model, before)


def test_filter_shared_neurons_drops_relation_wide_neurons():
    shared = Neuron(0, 1)
    neurons = {f"P1/{i}": [shared, Neuron(1, i)] for i in range(20)}
    neurons["P1/0"] = [shared, Neuron(1, 0), Neuron(1, 1)]  # (1, 1) in 2 of 20 facts: 10%, kept
    neurons["P2/0"] = [shared]  # another relation: its own count
    kept, dropped = filter_shared_neurons(neurons, 0.1)
    assert kept["P1/0"] == [Neuron(1, 0), Neuron(1, 1)]
    assert dropped["P1/0"] == [shared]
    assert kept["P1/5"] == [Neuron(1, 5)]
    assert kept["P2/0"] == [shared]  # one fact: a neuron of a single fact is always kept


def test_update_experiment_on_tiny_model(tiny_model):
    bags = tiny_bags()  # "Zorvik" subjects are fine: only objects must be one token
    neurons = tiny_neurons(bags)
    before = _state(tiny_model)
    cfg = PaperConfig(max_relation_share=1.0, ppl_bags=2, seed=3)
    with one_thread():
        res = update_experiment(
            tiny_model, bags, neurons, cfg, known_threshold=0.0, facts_per_relation=4
        )
    _assert_same_state(tiny_model, before)
    assert isinstance(res, UpdateResult)
    assert len(res.facts) == 8 and res.relations == ["P1", "P2"]
    by_key = {b.key: b for b in bags}
    for f in res.facts:
        bag = by_key[f.key]
        assert f.old_answer == bag.object and f.new_answer != bag.object
        assert f.new_answer in OBJECTS[bag.relation]
        assert f.key not in f.intra_keys and len(f.intra_keys) == 2 and len(f.inter_keys) == 2
        assert all(k.startswith(f.relation + "/") for k in f.intra_keys)
        assert not any(k.startswith(f.relation + "/") for k in f.inter_keys)
        assert f.random_neurons is not None and len(f.random_neurons) == len(f.neurons)
        assert not set(f.random_neurons) & set(f.neurons)
        for m in (f.knowledge, f.random):
            assert m is not None
            assert 0.0 <= m.success_rate <= 1.0
    d = res.to_dict()
    assert d["schema"] == "update" and ANALYSES["update"].paper == PAPER
    json.dumps(d)
    from kn_lens.plots import update_figure

    assert len(update_figure(d, PAPER).data) == 4  # ours, random, paper x2
    with one_thread():
        again = update_experiment(
            tiny_model,
            bags,
            neurons,
            cfg,
            known_threshold=0.0,
            facts_per_relation=4,
            relations=["P2"],
        )
    first_p2 = [f for f in d["facts"] if f["relation"] == "P2"]
    assert again.to_dict()["facts"] == first_p2  # seeded per fact, independent of other relations


def test_update_experiment_known_filter_and_errors(tiny_model):
    bags = tiny_bags()
    neurons = tiny_neurons(bags)
    res = update_experiment(
        tiny_model,
        bags,
        neurons,
        PaperConfig(max_relation_share=1.0),
        known_threshold=1.01,
        control=False,
    )
    assert res.facts == [] and all("not known" in s["reason"] for s in res.skipped)
    with pytest.raises(ValueError, match="no facts to edit"):
        update_experiment(tiny_model, bags, {}, PaperConfig())
    with pytest.raises(ValueError, match="P9"):
        update_experiment(tiny_model, bags, neurons, relations=["P9"])


# --------------------------------------------------------------------------------------------
# The default model (skipped when kn_lens/default_model is absent)
# --------------------------------------------------------------------------------------------


def test_default_model_knowledge_neuron_updates_beat_random(default_kn):
    model, bags, neurons_of = default_kn
    neurons = neurons_of("W01")  # place of birth
    before = _state(model)
    with one_thread():
        res = update_experiment(
            model, bags, neurons, PaperConfig(ppl_bags=2), relations=["W01"], facts_per_relation=10
        )
    _assert_same_state(model, before)
    kn, rnd = res.summary["knowledge"], res.summary["random"]
    assert kn["n_facts"] == 10
    # Measured on this setup (default model, W01, 10 facts, seed 0): knowledge neurons change
    # 0.66 of the correct answers, success 0.017, p(new) +0.033, rank(new) +22.7; random neurons
    # change 0.02, success 0.0, p(new) +0.000, rank(new) -2.8. Over 199 facts of 4 relations
    # (RESULTS.md) success is 0.096 vs 0.003. Margins below are about half the measured gaps.
    assert kn["change_rate"] >= rnd["change_rate"] + 0.3
    assert kn["prob_gain"] >= rnd["prob_gain"] + 0.01
    assert kn["rank_gain"] >= rnd["rank_gain"] + 5
    assert kn["success_rate"] >= rnd["success_rate"]
