"""Coarse neurons, refinement and the adaptive sharing threshold on hand-made scores."""

from __future__ import annotations

import json

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.data import Fact, FactBag
from kn_lens.errors import KnLensError
from kn_lens.knowledge_neurons import (
    BagScores,
    RelationNeurons,
    adaptive_refine,
    coarse_neurons,
    find_knowledge_neurons,
    identify_all,
    identify_relation,
    most_shared,
    refine,
    shared_count_threshold,
)
from kn_lens.neuron import Neuron

N_LAYERS, D_MLP = 3, 8


def _bag(n_prompts: int, relation: str = "P1", index: int = 0, obj: str = "Paris") -> FactBag:
    prompts = tuple(f"Alice {'is ' * i}born in [MASK] ." for i in range(n_prompts))
    return FactBag(Fact(f"S{index}", relation, "rel", "N-1", obj), prompts, index=index)


def _scores(n_prompts: int, entries: dict[int, dict[tuple[int, int], float]]) -> torch.Tensor:
    """Dense [prompt, layer, d_mlp] scores: small noise plus the given entries per prompt."""
    s = torch.full((n_prompts, N_LAYERS, D_MLP), 0.01)
    for prompt, cells in entries.items():
        for (layer, idx), v in cells.items():
            s[prompt, layer, idx] = v
    return s


def test_coarse_threshold_is_relative_to_each_prompts_max():
    s = _scores(
        2,
        {0: {(0, 1): 1.0, (1, 2): 0.2, (2, 3): 0.19}, 1: {(0, 1): 10.0, (1, 2): 1.0, (2, 7): 3.0}},
    )
    coarse = coarse_neurons(s, 0.2)
    assert coarse[0] == {Neuron(0, 1), Neuron(1, 2)}  # 0.2 >= 0.2 * 1.0 kept; 0.19 dropped
    assert coarse[1] == {Neuron(0, 1), Neuron(2, 7)}  # 1.0 < 0.2 * 10
    # a prompt whose maximum is not positive has no coarse neurons
    assert coarse_neurons(-torch.ones(1, N_LAYERS, D_MLP), 0.2) == [set()]


def test_refine_keeps_neurons_shared_by_enough_prompts():
    # 10 prompts: A in all, B in 7 (= 0.7 * 10, kept), C in 6 (dropped), D in 2.
    A, B, C, D = Neuron(0, 0), Neuron(1, 3), Neuron(2, 5), Neuron(2, 6)
    entries = {}
    for i in range(10):
        cells = {(A.layer, A.index): 1.0}
        if i < 7:
            cells[(B.layer, B.index)] = 0.5
        if i < 6:
            cells[(C.layer, C.index)] = 0.5
        if i < 2:
            cells[(D.layer, D.index)] = 0.9
        entries[i] = cells
    coarse = coarse_neurons(_scores(10, entries), 0.2)
    assert refine(coarse, 0.7) == [A, B]  # sorted by share, most first
    assert refine(coarse, 0.6) == [A, B, C]
    assert refine(coarse, 0.0) == [A, B, C]  # the floor of 3 prompts still drops D
    assert refine(coarse, 0.0, min_shared=2) == [A, B, C, D]
    assert refine(coarse, 1.0) == [A]
    # the most shared: A alone (all 10); without A, B (7); nothing coarse: none
    assert most_shared(coarse) == [A]
    assert most_shared([c - {A} for c in coarse]) == [B]
    assert most_shared([c - {A, B, C} for c in coarse]) == [D]
    assert most_shared([set(), set()]) == []


def test_shared_count_threshold_rounding_and_small_bags():
    assert shared_count_threshold(10, 0.7) == 7  # 0.7 * 10 exactly, not 8 through float error
    assert shared_count_threshold(8, 0.7) == 6  # ceil(5.6)
    assert shared_count_threshold(4, 0.5) == 3  # the floor of 3 wins
    assert shared_count_threshold(2, 0.5) == 2  # fewer prompts than the floor: all of them
    assert shared_count_threshold(1, 0.7) == 1
    with pytest.raises(ValueError, match="p must lie"):
        shared_count_threshold(5, 1.5)


def test_bag_with_two_prompts_needs_neuron_in_both():
    s = _scores(2, {0: {(0, 0): 1.0, (1, 1): 0.5}, 1: {(0, 0): 1.0, (2, 2): 0.5}})
    assert refine(coarse_neurons(s, 0.2), 0.7) == [Neuron(0, 0)]


def test_bagscores_match_dense_and_roundtrip_json():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(5, N_LAYERS, D_MLP, generator=g)
    act = torch.rand(5, N_LAYERS, D_MLP, generator=g)
    bag = _bag(5)
    bs = BagScores.from_tensors(bag, {"ig": dense, "activation": act}, floor=0.1, steps=7)
    for t in (0.1, 0.2, 0.35, 0.5, 0.9):
        assert coarse_neurons(bs, t) == coarse_neurons(dense, t)
        assert coarse_neurons(bs, t, method="activation") == coarse_neurons(act, t)
    back = BagScores.from_dict(json.loads(json.dumps(bs.to_dict())))
    assert back == bs
    assert back.key == "P1/0" and back.steps == 7 and back.n_layers == N_LAYERS
    with pytest.raises(ValueError, match="below the floor"):
        coarse_neurons(bs, 0.05)
    with pytest.raises(ValueError, match="unknown attribution method"):
        coarse_neurons(bs, 0.2, method="grad")
    with pytest.raises(ValueError, match="3 score rows for 5 prompts"):
        BagScores.from_tensors(bag, {"ig": dense[:3]})


def _bag_scores_with(n_shared: list[int], relation: str = "P1") -> list[BagScores]:
    """One bag per entry: 10 prompts; neuron j of the bag is coarse in (10 - j) prompts for
    j < n_shared[k] * 2, so the number kept depends smoothly on p."""
    out = []
    for k, n in enumerate(n_shared):
        entries = {}
        for i in range(10):
            cells = {(0, 0): 1.0}
            for j in range(n):
                if i < 10 - j:
                    cells[(1 + j % 2, j // 2)] = 0.5
            entries[i] = cells
        bag = _bag(10, relation=relation, index=k)
        out.append(BagScores.from_tensors(bag, {"ig": _scores(10, entries)}))
    return out


def test_adaptive_p_converges_by_raising_p():
    # Each bag: neuron (0,0) in 10 prompts plus 8 neurons in 10, 9, ..., 3 prompts.
    # At p=0.7 (>= 7 prompts) a bag keeps 1 + 4 = 5 ... with 2 bags of 8 and 8.
    scores = _bag_scores_with([8, 8])
    cfg = PaperConfig()
    rn = identify_relation(scores, cfg)
    # p=0.7: counts >= 7 -> (0,0) + j=0..3 -> 5 neurons: already in [2, 5].
    assert rn.converged and rn.rounds == 1 and rn.p == pytest.approx(0.7)
    assert rn.mean_neurons == 5
    # With a narrower target the loop raises p until the count drops into it.
    rn2 = identify_relation(scores, cfg.with_(target_neurons=(2.0, 3.0)))
    assert rn2.converged
    assert [h[0] for h in rn2.history] == pytest.approx([0.7, 0.75, 0.8, 0.85])
    assert [h[1] for h in rn2.history] == [5, 4, 4, 3]
    assert rn2.p == pytest.approx(0.85) and rn2.rounds == 4
    assert all(len(v) == 3 for v in rn2.neurons.values())


def test_adaptive_p_lowers_p_when_too_few():
    # Each bag: (0,0) in all 10 prompts, and j=0..5 in 10..5 prompts; target [6, 7]
    scores = _bag_scores_with([6, 6, 6])
    rn = identify_relation(scores, PaperConfig(target_neurons=(6.0, 7.0)))
    assert rn.converged and rn.history[0] == (pytest.approx(0.7), 5.0)
    # p=0.65 still needs ceil(6.5) = 7 prompts; p=0.6 needs 6 -> (0,0) + j=0..4
    assert [h[1] for h in rn.history] == [5, 5, 6]
    assert rn.p == pytest.approx(0.6) and rn.mean_neurons == 6


def test_adaptive_p_stops_after_max_rounds():
    scores = _bag_scores_with([8])
    rn = identify_relation(scores, PaperConfig(target_neurons=(20.0, 30.0)))
    assert not rn.converged and rn.rounds == 6
    assert rn.p == pytest.approx(0.45)  # 0.7 lowered five times
    rn3 = identify_relation(scores, PaperConfig(target_neurons=(20.0, 30.0), p_rounds=3))
    assert rn3.rounds == 3 and not rn3.converged


def test_adaptive_refine_stops_when_p_cannot_move():
    coarse = {"P1/0": [{Neuron(0, i) for i in range(10)}] * 4}
    p, rounds, converged, history, neurons = adaptive_refine(coarse, p=1.0, target=(1.0, 2.0))
    assert rounds == 1 and not converged and len(neurons["P1/0"]) == 10


def test_identify_relation_rejects_mixed_relations_and_roundtrips():
    a = _bag_scores_with([8], relation="P1")
    b = _bag_scores_with([8], relation="P2")
    with pytest.raises(ValueError, match="P2/0 is of relation P2"):
        identify_relation([*a, *b])
    with pytest.raises(ValueError, match="no 'activation' scores"):
        identify_relation(a, method="activation")
    both = identify_all([*a, *b])
    assert list(both) == ["P1", "P2"]
    d = json.loads(json.dumps(both["P1"].to_dict()))
    assert d["schema"] == "relation_neurons"
    back = RelationNeurons.from_dict(d)
    assert back.neurons == both["P1"].neurons and back.p == both["P1"].p


def test_baseline_uses_its_own_threshold():
    # activation scores: neuron (1,1) at 0.4 of max in all prompts -> coarse at t=0.2, not at 0.5
    entries = {i: {(0, 0): 1.0, (1, 1): 0.4, (2, 2): 0.6} for i in range(5)}
    bs = BagScores.from_tensors(
        _bag(5), {"activation": _scores(5, entries), "ig": _scores(5, entries)}
    )
    ours = identify_relation([bs], PaperConfig(target_neurons=(0.0, 99.0)), method="ig")
    base = identify_relation([bs], PaperConfig(target_neurons=(0.0, 99.0)), method="activation")
    assert set(ours.neurons["P1/0"]) == {Neuron(0, 0), Neuron(1, 1), Neuron(2, 2)}
    assert set(base.neurons["P1/0"]) == {Neuron(0, 0), Neuron(2, 2)}
    assert base.t == 0.5 and ours.t == 0.2


def test_find_knowledge_neurons_uses_attribution_once_per_method(monkeypatch, tiny_model):
    import kn_lens.attribution as attribution

    calls = []
    entries = {i: {(0, 3): 1.0, (1, 9): 0.5} for i in range(4)}
    entries[0][(1, 40)] = 0.8

    def fake_attribute(model, prompts, target, *, steps=20, method="ig", batch_size=64, **kw):
        calls.append((method, len(prompts), target, steps))
        s = torch.full((len(prompts), 2, 64), 0.01)
        for i, cells in entries.items():
            for (layer, idx), v in cells.items():
                s[i, layer, idx] = v
        return s

    monkeypatch.setattr(attribution, "attribute", fake_attribute)
    bag = _bag(4)
    got = find_knowledge_neurons(tiny_model, bag, config=PaperConfig(steps=3))
    assert got == [Neuron(0, 3), Neuron(1, 9)]
    assert calls == [("ig", 4, "Paris", 3)]


def test_score_bag_with_real_attribution(tiny_model):
    from kn_lens.attribution import attribute
    from kn_lens.knowledge_neurons import score_bag

    bag = FactBag(
        Fact("Alice", "P19", "born in", "N-1", "Paris"),
        (
            "Alice was born in [MASK] .",
            "Alice is born in the city of [MASK] .",
            "Alice was born in the [MASK] city .",
            "Alice born in [MASK] .",
        ),
    )
    cfg = PaperConfig(steps=4)
    bs = score_bag(tiny_model, bag, cfg)
    assert bs.methods() == ("ig", "activation") and bs.n_layers == 2 and bs.d_mlp == 64
    dense = attribute(tiny_model, list(bag.prompts), "Paris", steps=4, method="ig")
    assert coarse_neurons(bs, 0.2) == coarse_neurons(dense, 0.2)
    assert find_knowledge_neurons(tiny_model, bag, config=cfg, scores=bs) == refine(
        coarse_neurons(dense, 0.2), 0.7
    )
    assert BagScores.from_dict(json.loads(json.dumps(bs.to_dict()))) == bs


def test_attribution_options_reach_the_scores(tiny_model):
    """find_knowledge_neurons takes every attribution method and contrast; PaperConfig's baseline
    and objective reach kn_lens.attribute (scores equal to calling it directly)."""
    from kn_lens.attribution import attribute
    from kn_lens.knowledge_neurons import score_bag

    fact = Fact("Alice", "P19", "place of birth", "N-1", "Paris")
    bag = FactBag(fact, ("Alice was born in [MASK] .", "Alice is born in [MASK] ."))
    for method in ("ig", "grad_x_act", "activation"):
        neurons = find_knowledge_neurons(tiny_model, bag, method=method)
        assert all(isinstance(n, Neuron) for n in neurons)
    cfg = PaperConfig(steps=3, baseline="mean", objective="logprob")
    got = score_bag(tiny_model, bag, cfg, methods=("ig",), contrast=["London"], floor=0.0)
    dense = attribute(
        tiny_model,
        bag.prompts,
        "Paris",
        steps=3,
        baseline="mean",
        objective="logprob",
        contrast=["London"],
    )
    kept = got.prompt_scores("ig")[0]
    for layer, idx, s in kept.neurons[:20]:
        assert s == pytest.approx(float(dense[0, layer, idx]), rel=1e-5, abs=1e-9)


def test_paper_config_refuses_unknown_option_values():
    for bad in (dict(baseline="uniform"), dict(objective="logit"), dict(dtype="int8")):
        with pytest.raises(KnLensError, match=next(iter(bad))):
            PaperConfig(**bad)
