"""Suppress / amplify: bookkeeping on the tiny model, the real effect on the default one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens.config import PaperConfig
from kn_lens.data import Fact, FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.controls import random_control
from kn_lens.experiments.modify import ModifyResult, modify, unrelated_bag
from kn_lens.interventions import scaled_answer_probs, scaled_answer_reads
from kn_lens.neuron import Neuron
from kn_lens.readout import encode_facts

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "kn_lens" / "default_model"


def _tiny_bags(index_offset: int = 0) -> list[FactBag]:
    born = Fact("Alice", "P19", "born in", "N-1", "Paris")
    capital = Fact("Bob", "P36", "capital", "1-1", "London")
    job = Fact("Alice", "P106", "occupation", "N-M", "doctor")
    i = index_offset
    return [
        FactBag(born, ("Alice was born in [MASK] .", "Alice is born in the city [MASK] ."), i),
        FactBag(capital, ("the capital of Bob is [MASK] .", "[MASK] is the capital of Bob ."), i),
        FactBag(job, ("Alice works as a [MASK] .", "Alice is a [MASK] ."), i),
    ]


def test_unrelated_bag_is_seeded_and_of_another_relation():
    bags = _tiny_bags()
    for b in bags:
        o = unrelated_bag(bags, b, 0)
        assert o is not None and o.relation != b.relation
        assert unrelated_bag(bags, b, 0) is o
    assert unrelated_bag(bags[:1], bags[0], 0) is None


def test_modify_bookkeeping_matches_direct_measurement(tiny_model):
    bags = _tiny_bags()
    ours = {"P19/0": [Neuron(1, 3), Neuron(1, 10)], "P36/0": [Neuron(0, 5)]}
    base = {"P19/0": [Neuron(0, 1)], "P36/0": [], "P106/0": [Neuron(1, 7)]}
    res = modify(tiny_model, bags, ours, base, PaperConfig(seed=3))
    assert isinstance(res, ModifyResult) and res.methods == ("ours", "baseline", "random")
    assert [f.key for f in res.facts] == ["P19/0", "P36/0", "P106/0"]
    f0 = res.facts[0]
    other = next(b for b in bags if b.key == f0.other_key)
    assert other.relation != "P19"
    # Δp on own prompts equals a direct measurement with the same hooks
    enc = encode_facts(tiny_model, list(bags[0].prompts), ["Paris"] * 2)
    clean = scaled_answer_probs(tiny_model, enc, [], None)
    for op, factor in (("suppress", 0.0), ("amplify", 2.0)):
        hooked = scaled_answer_probs(tiny_model, enc, ours["P19/0"], factor)
        assert f0.delta["ours"][op]["own"] == pytest.approx(
            float((hooked - clean).mean()), abs=1e-6
        )
    assert f0.p_own == pytest.approx(float(clean.mean()), abs=1e-6)
    # a fact without neurons of a method is left out of that method only
    assert "baseline" not in res.facts[1].delta and "ours" not in res.facts[2].delta
    assert res.relations["P36"]["baseline"]["suppress"].n_facts == 0
    assert res.pooled["ours"]["suppress"].n_facts == 2
    st = res.relations["P19"]["ours"]["suppress"]
    assert st.own_pct == pytest.approx(100 * st.own_delta / st.own_p)
    ov = res.overall["ours"]["amplify"]
    assert ov["n_relations"] == 2 and ov["own_pct"] == pytest.approx(
        (
            res.relations["P19"]["ours"]["amplify"].own_pct
            + res.relations["P36"]["ours"]["amplify"].own_pct
        )
        / 2
    )
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema"] == "modify" and ANALYSES["modify"].paper["suppress"]["ours"] == -29.03


def test_random_control_flips_and_same_relation(tiny_model):
    bags = [*_tiny_bags(), *_tiny_bags(index_offset=1)]
    ours = {b.key: [Neuron(1, 3), Neuron(1, 10), Neuron(0, 5)] for b in bags}
    res = modify(tiny_model, bags, ours, None, PaperConfig(seed=3))
    assert res.methods == ("ours", "random")
    for f in res.facts:
        # the control: as many neurons, from the same layers, none of the fact's own
        ctrl = random_control(ours[f.key], 64, 3, f.key)
        assert sorted(n.layer for n in ctrl) == sorted(n.layer for n in ours[f.key])
        assert not set(ctrl) & set(ours[f.key]) and len(set(ctrl)) == len(ctrl)
        assert f.n_neurons == {"ours": 3, "random": 3}
        same = next(b for b in bags if b.key == f.same_key)
        assert same.relation == f.relation and same.key != f.key
        enc = encode_facts(tiny_model, list(same.prompts), [same.object] * len(same.prompts))
        clean, top0 = scaled_answer_reads(tiny_model, enc, [], None)
        hooked, _ = scaled_answer_reads(tiny_model, enc, ours[f.key], 0.0)
        assert f.delta["ours"]["suppress"]["same"] == pytest.approx(
            float((hooked - clean).mean()), abs=1e-6
        )
        own = next(b for b in bags if b.key == f.key)
        enc = encode_facts(tiny_model, list(own.prompts), [own.object] * len(own.prompts))
        _, base_top = scaled_answer_reads(tiny_model, enc, [], None)
        _, top = scaled_answer_reads(tiny_model, enc, ctrl, 2.0)
        assert f.delta["random"]["amplify"]["flip"] == pytest.approx(
            float((top != base_top).float().mean())
        )
    assert 0.0 <= res.overall["ours"]["suppress"]["flip"] <= 1.0


def test_modify_skips_facts_without_neurons_and_checks_input(tiny_model):
    bags = _tiny_bags()
    res = modify(
        tiny_model, bags, {"P19/0": [Neuron(1, 3)]}, config=PaperConfig(modify_random=False)
    )
    assert res.methods == ("ours",) and res.skipped_facts == {
        "P36/0": "no_neurons",
        "P106/0": "no_neurons",
    }
    with pytest.raises(KnLensError, match="bag P19/0"):
        modify(tiny_model, bags, {"P19/0": [Neuron(7, 3)]})
    with pytest.raises(KnLensError, match="appears twice"):
        modify(tiny_model, bags + bags[:1], {})


# ---- the default model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_setup():
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(
            "kn_lens/default_model is absent (train it with python -m kn_lens.data.world train)"
        )
    from kn_lens import load_model
    from kn_lens.data import default_facts
    from kn_lens.knowledge_neurons import identify_all, score_bags

    model = load_model("default", device="cpu")
    by_rel: dict[str, list[FactBag]] = {}
    for b in default_facts():
        by_rel.setdefault(b.relation, []).append(b)
    # Two facts from each of three relations, IG with 5 steps (not 20) keeps this cheap (~5 s of
    # CPU); the neurons hardly differ from 20 steps on this small model.
    bags = [b for rel in sorted(by_rel)[:3] for b in by_rel[rel][:2]]
    cfg = PaperConfig(steps=5)
    scores = score_bags(model, bags, cfg)
    ours = {k: v for rn in identify_all(scores, cfg, "ig").values() for k, v in rn.neurons.items()}
    base = {
        k: v
        for rn in identify_all(scores, cfg, "activation").values()
        for k, v in rn.neurons.items()
    }
    return model, bags, ours, base, cfg


def test_default_model_suppressing_knowledge_neurons(default_setup):
    # Measured on the default checkpoint of 2026-11-26 (sha256 718029d8...), these 6 facts:
    # ours suppress own -16.2 %, unrelated +0.0 %; baseline suppress own -5.9 %;
    # amplify own: ours +2.1 %, baseline -0.4 %. Margins below are about half of those gaps.
    model, bags, ours, base, cfg = default_setup
    res = modify(model, bags, ours, base, cfg)
    s = res.pooled["ours"]["suppress"]
    assert s.n_facts == len(bags)
    # own facts lose far more than unrelated facts under the same neurons
    assert s.own_pct < -8
    assert s.own_pct < s.other_pct - 8
    assert abs(s.other_pct) < 3
    # our neurons beat the activation baseline on the same measure
    b = res.pooled["baseline"]["suppress"]
    assert s.own_pct < b.own_pct - 5
    # amplifying our neurons raises the own answer's probability, more than the baseline's do
    a, ab = res.pooled["ours"]["amplify"], res.pooled["baseline"]["amplify"]
    assert a.own_pct > 0.5 and a.own_pct > ab.own_pct + 1


def test_modify_figure_from_result_dict(tiny_model, tmp_path):
    from kn_lens.plots import modify_figure, save_figure

    res = modify(
        tiny_model,
        _tiny_bags(),
        {"P19/0": [Neuron(1, 3)], "P36/0": [Neuron(0, 5)]},
        {"P19/0": [Neuron(0, 1)]},
    )
    fig = modify_figure(json.loads(json.dumps(res.to_dict())), ANALYSES["modify"].paper)
    names = {t.name for t in fig.data}
    assert {"our knowledge neurons", "baseline neurons", "paper: knowledge neurons"} <= names
    ours_suppress = next(t for t in fig.data if t.name == "our knowledge neurons")
    assert ours_suppress.y[0] == pytest.approx(res.overall["ours"]["suppress"]["own_pct"])
    out = save_figure(fig, tmp_path / "modify")
    assert Path(out["html"]).is_file()
