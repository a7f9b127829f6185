"""Identification statistics (kn_lens.experiments.identify) on hand-made neurons and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens.experiments import ANALYSES
from kn_lens.experiments.identify import (
    IdentificationResult,
    identification_from_neurons,
    identification_from_scores,
    layer_counts,
    neurons_from_result,
    other_relation_sample,
    overlap_count,
    same_relation_overlaps,
)
from kn_lens.knowledge_neurons import RelationNeurons
from kn_lens.neuron import Neuron
from tests.test_knowledge_neurons import N_LAYERS, _bag_scores_with


def _rn(relation: str, neurons: dict[str, list[Neuron]], method: str = "ig") -> RelationNeurons:
    mean = sum(len(v) for v in neurons.values()) / len(neurons)
    return RelationNeurons(relation, method, 0.2, 0.7, 1, True, mean, [(0.7, mean)], neurons)


def test_overlap_counts_on_known_sets():
    a = [Neuron(0, 1), Neuron(1, 2), Neuron(2, 3)]
    b = [Neuron(1, 2), Neuron(2, 3), Neuron(2, 4)]
    c = [Neuron(0, 9)]
    assert overlap_count(a, b) == 2 and overlap_count(a, c) == 0 and overlap_count(b, b) == 3
    assert same_relation_overlaps([a, b, c]) == [2, 0, 0]
    assert layer_counts([a, b, c], 3) == [2, 2, 3]


def test_other_relation_sample_is_seeded_and_excludes_own_relation():
    keys = {
        "P1": [f"P1/{i}" for i in range(5)],
        "P2": [f"P2/{i}" for i in range(150)],
        "P3": [f"P3/{i}" for i in range(30)],
    }
    s1 = other_relation_sample(keys, "P1/0", "P1", 100, seed=0)
    assert len(s1) == 100 == len(set(s1)) and not any(k.startswith("P1/") for k in s1)
    assert s1 == other_relation_sample(keys, "P1/0", "P1", 100, seed=0)
    assert s1 != other_relation_sample(keys, "P1/0", "P1", 100, seed=1)
    assert sorted(other_relation_sample(keys, "P2/0", "P2", 100, seed=0)) == sorted(
        keys["P1"] + keys["P3"]
    )  # fewer than 100 others: all of them


def test_identification_statistics_on_known_neurons():
    A, B, C, D, E = (Neuron(2, 0), Neuron(2, 1), Neuron(1, 5), Neuron(0, 7), Neuron(2, 9))
    ours = {
        "P1": _rn("P1", {"P1/0": [A, B, C], "P1/1": [A, B], "P1/2": [A]}),
        "P2": _rn("P2", {"P2/0": [A, D], "P2/1": [E]}),
    }
    base = {
        "P1": _rn("P1", {"P1/0": [D], "P1/1": [], "P1/2": [D]}, "activation"),
        "P2": _rn("P2", {"P2/0": [D], "P2/1": [D]}, "activation"),
    }
    res = identification_from_neurons(ours, base, n_layers=3, d_mlp=10)
    p1 = res.relations["P1"].ours
    assert p1.neurons_per_fact == 2.0
    assert p1.n_pairs_same_relation == 3 and p1.overlap_same_relation == pytest.approx(4 / 3)
    # other relations: each P1 fact against both P2 facts: (1+0)+(1+0)+(1+0) over 6 pairs
    assert p1.n_pairs_other_relations == 6 and p1.overlap_other_relations == pytest.approx(0.5)
    p2 = res.relations["P2"].ours
    assert p2.overlap_same_relation == 0 and p2.overlap_other_relations == pytest.approx(3 / 6)
    o = res.overall.ours
    assert o.n_facts == 5 and o.neurons_per_fact == pytest.approx(9 / 5)
    assert o.n_pairs_same_relation == 4 and o.overlap_same_relation == pytest.approx(4 / 4)
    assert o.layer_counts == [1, 1, 7]
    assert o.layer_pct == pytest.approx([100 / 9, 100 / 9, 700 / 9])
    b = res.overall.baseline
    assert b is not None and res.relations["P1"].baseline is not None
    assert b.facts_without_neurons == 1 and b.layer_pct == pytest.approx([100.0, 0.0, 0.0])
    assert res.relations["P1"].baseline.overlap_same_relation == pytest.approx(1 / 3)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema"] == "identify" and d["overall"]["ours"]["layer_counts"] == [1, 1, 7]
    assert neurons_from_result(d)["P1/0"] == [A, B, C]
    assert neurons_from_result(res, "baseline")["P1/1"] == []
    assert ANALYSES["identify"].paper["neurons_per_fact"]["ours"] == 4.13


def test_identification_from_scores_runs_both_methods():
    scores = _bag_scores_with([8, 8], relation="P1") + _bag_scores_with([6], relation="P2")
    for s in scores:  # give each record activation scores equal to its IG ones
        s.scores["activation"] = s.scores["ig"]
    res = identification_from_scores(scores)
    assert isinstance(res, IdentificationResult)
    assert set(res.relations) == {"P1", "P2"} and res.relations["P1"].ours.p == pytest.approx(0.7)
    assert res.relations["P1"].baseline is not None
    assert res.n_layers == N_LAYERS and res.settings["t"] == 0.2


def test_layer_distribution_figure(tmp_path):
    from kn_lens.plots import layer_distribution_figure, save_figure

    ours = {"P1": _rn("P1", {"P1/0": [Neuron(2, 0), Neuron(1, 1)], "P1/1": [Neuron(2, 0)]})}
    base = {"P1": _rn("P1", {"P1/0": [Neuron(0, 0)], "P1/1": []}, "activation")}
    d = identification_from_neurons(ours, base, n_layers=3, d_mlp=4).to_dict()
    fig = layer_distribution_figure(json.loads(json.dumps(d)), {})
    assert list(fig.data[0].x) == ["1", "2", "3"]
    assert list(fig.data[0].y) == pytest.approx([0.0, 100 / 3, 200 / 3])
    assert list(fig.data[1].y) == pytest.approx([100.0, 0.0, 0.0])
    assert layer_distribution_figure(d, {}, relation="P1").data[0].y == fig.data[0].y
    assert Path(save_figure(fig, tmp_path / "layers")["html"]).is_file()


def test_fast_pair_overlap_sum_matches_all_pairs():
    import random as _random

    from kn_lens.experiments.identify import same_relation_overlap_sum

    rng = _random.Random(0)
    lists = [
        [Neuron(rng.randrange(3), rng.randrange(6)) for _ in range(rng.randrange(5))]
        for _ in range(12)
    ]
    total, pairs = same_relation_overlap_sum(lists)
    assert pairs == 66 and total == sum(same_relation_overlaps(lists))


def test_neurons_from_a_result_dict_refuse_non_integers():
    """The dict form of a result (results.json) is read as integers or refused, never rounded."""
    import pytest

    from kn_lens.errors import KnLensError
    from kn_lens.experiments.identify import neurons_from_result
    from kn_lens.knowledge_neurons import RelationNeurons
    from kn_lens.neuron import Neuron

    assert neurons_from_result({"neurons": {"ours": {"P19/0": [[2, 16]]}}}) == {
        "P19/0": [Neuron(2, 16)]
    }
    with pytest.raises(KnLensError, match="P19/0"):
        neurons_from_result({"neurons": {"ours": {"P19/0": [[2.7, 16.9]]}}})
    d = {
        "relation": "P19",
        "method": "ig",
        "t": 0.2,
        "p": 0.7,
        "rounds": 1,
        "converged": True,
        "mean_neurons": 1.0,
        "history": [],
        "neurons": {"P19/0": [[2, "16"]]},
    }
    with pytest.raises(KnLensError, match="RelationNeurons P19: neurons of P19/0"):
        RelationNeurons.from_dict(d)
    d["neurons"] = {"P19/0": [[2, 16]]}
    assert RelationNeurons.from_dict(d).neurons == {"P19/0": [Neuron(2, 16)]}
