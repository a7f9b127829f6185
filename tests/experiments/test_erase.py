"""Erasing relations by zeroing knowledge neurons' value vectors (kn_lens.experiments.erase)."""

from __future__ import annotations

import json

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.errors import KnLensError
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.erase import (
    PAPER,
    PAPER_RELATIONS,
    EraseResult,
    erase_experiment,
    erase_relation,
    relation_top_neurons,
)
from kn_lens.neuron import Neuron
from tests.experiments.conftest import one_thread
from tests.experiments.test_update import tiny_bags, tiny_neurons


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


NEURONS = {
    "P1/0": [Neuron(1, 4), Neuron(0, 2), Neuron(0, 9)],
    "P1/1": [Neuron(1, 4), Neuron(0, 9)],
    "P1/2": [Neuron(1, 4), Neuron(0, 2), Neuron(1, 1)],
    "P2/0": [Neuron(1, 4), Neuron(1, 4), Neuron(0, 30)],  # repeats count once per fact
}


def test_relation_top_neurons_counts_facts_and_breaks_ties():
    top = relation_top_neurons(NEURONS, "P1", top=3)
    assert top == [(Neuron(1, 4), 3), (Neuron(0, 2), 2), (Neuron(0, 9), 2)]
    assert relation_top_neurons(NEURONS, "P2", top=20) == [(Neuron(0, 30), 1), (Neuron(1, 4), 1)]
    with pytest.raises(KnLensError, match="'P3' has no knowledge neurons"):
        relation_top_neurons(NEURONS, "P3")
    with pytest.raises(KnLensError, match="top must be"):
        relation_top_neurons(NEURONS, "P1", top=0)


def test_erase_relation_zeroes_top_rows_and_restores_exactly(tiny_model):
    before = _state(tiny_model)
    row9 = tiny_model.blocks[0].mlp.W_out[9].detach().clone()
    with erase_relation(tiny_model, NEURONS, "P1", top=2) as h:
        assert h.neurons == (Neuron(1, 4), Neuron(0, 2))
        assert torch.count_nonzero(tiny_model.blocks[1].mlp.W_out[4]) == 0
        assert torch.count_nonzero(tiny_model.blocks[0].mlp.W_out[2]) == 0
        assert torch.equal(tiny_model.blocks[0].mlp.W_out[9], row9)
    _assert_same_state(tiny_model, before)


def test_erase_experiment_on_tiny_model(tiny_model):
    bags = tiny_bags()
    neurons = tiny_neurons(bags)
    before = _state(tiny_model)
    res = erase_experiment(tiny_model, bags, neurons, ["P1"], PaperConfig(erase_top=4))
    _assert_same_state(tiny_model, before)
    assert isinstance(res, EraseResult) and res.relations == ["P1"]
    assert set(res.before) == {"P1", "P2"}
    (er,) = res.erasures
    assert len(er.erased) == 4 and er.counts == sorted(er.counts, reverse=True)
    assert er.random_neurons is not None and not set(er.random_neurons) & set(er.erased)
    s = er.summary
    assert s["ppl_before"] == res.before["P1"].ppl
    for k in (
        "accuracy_after",
        "ppl_after",
        "others_ppl_after",
        "others_mean_ppl_change",
        "random_ppl_after",
    ):
        assert k in s
    assert res.before["P1"].n_prompts == 6 * 3
    d = res.to_dict()
    assert d["schema"] == "erase" and ANALYSES["erase"].paper == PAPER
    json.dumps(d)
    from kn_lens.plots import erase_figure

    fig = erase_figure(d, PAPER)
    assert [t.x[0] for t in fig.data] == ["P1"] * 5
    assert list(PAPER_RELATIONS) == ["P19", "P27", "P106", "P937"]


def test_default_erase_relations_by_id_or_label():
    from kn_lens.experiments.erase import default_relations

    assert default_relations(["P19", "P31", "P106"], {}) == ["P19", "P106"]
    labels = {"W01": "place of birth", "W02": "colour", "W05": "occupation"}
    assert default_relations(["W01", "W02", "W05"], labels) == ["W01", "W05"]
    assert default_relations(["W02"], labels) == ["W02"]  # none of the paper's: all of them


def test_erase_experiment_bad_input(tiny_model):
    bags = tiny_bags()
    with pytest.raises(KnLensError, match="no relations"):
        erase_experiment(tiny_model, bags, tiny_neurons(bags), [])
    with pytest.raises(KnLensError, match="P7"):
        erase_experiment(tiny_model, bags, tiny_neurons(bags), ["P7"])
    with pytest.raises(KnLensError, match="'P2' has no knowledge neurons"):
        erase_experiment(tiny_model, bags, {"P1/0": [Neuron(0, 1)]}, ["P2"])


def test_default_model_erasing_a_relation_hurts_it_far_more_than_others(default_kn):
    model, bags, neurons_of = default_kn
    neurons = neurons_of("W14")  # headquarters location
    before = _state(model)
    eval_bags = [b for b in bags if b.relation in ("W14", "W01", "W02", "W10", "W05")]
    with one_thread():
        res = erase_experiment(
            model,
            eval_bags,
            neurons,
            ["W14"],
            PaperConfig(),
            max_bags_per_relation=30,
            control=True,
        )
    _assert_same_state(model, before)
    s = res.erasures[0].summary
    drop = s["accuracy_before"] - s["accuracy_after"]
    random_drop = s["accuracy_before"] - s["random_accuracy_after"]
    ppl_change = s["ppl_after"] / s["ppl_before"] - 1
    random_ppl_change = s["random_ppl_after"] / s["ppl_before"] - 1
    # Measured on the shipped default model (24 bags per relation attributed with IG steps=10,
    # top 20 neurons zeroed, 30 bags scored per relation, seed 0). W14: accuracy 0.917 -> 0.850,
    # perplexity +10.3%; other relations: accuracy -0.004, perplexity +1.0%; 20 random neurons:
    # accuracy -0.0, perplexity -0.6%. Erasing is weak on this small model: over W01, W02, W05,
    # W09, W10, W11 and W14 the erased relation's perplexity rose by +2.2% to +10.3% and its
    # accuracy fell by at most 0.067 (W05's even rose by 0.011), always above the random control.
    # The margins below are about half of W14's measured gaps.
    assert drop >= s["others_mean_accuracy_drop"] + 0.03
    assert drop >= random_drop + 0.03
    assert ppl_change >= 0.05
    assert ppl_change >= s["others_mean_ppl_change"] + 0.045
    assert ppl_change >= random_ppl_change + 0.05
