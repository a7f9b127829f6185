"""localize: six localisation methods compared on the same facts of the default model."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from kn_lens.config import ANALYSIS_NAMES, PaperConfig
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.controls import random_control
from kn_lens.experiments.localize import MEASURES, METHODS, localize, run
from kn_lens.experiments.localize_tools import (
    jaccard,
    pick_foils,
    select_neurons,
    spearman,
    summed_scores,
)
from kn_lens.experiments.modify import change_pct
from kn_lens.experiments.registry import AnalysisInputs
from kn_lens.interventions import scaled_answer_reads
from kn_lens.knowledge_neurons import BagScores, PromptScores, identify_all, score_bags
from kn_lens.neuron import Neuron
from kn_lens.readout import encode_facts

from .conftest import one_thread

CFG = PaperConfig(steps=3)


@pytest.fixture(scope="module")
def setup(request):
    """The default model, 2 relations x 3 facts, their stored scores, ig neurons and the
    localize result (through the registry's run, as the pipeline calls it)."""
    from kn_lens.models import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"default model not found in {DEFAULT_MODEL_DIR}")
    from tests.experiments.conftest import _default_model_and_bags

    model, all_bags = _default_model_and_bags()
    rels = list(dict.fromkeys(b.relation for b in all_bags))[:2]
    bags = [b for r in rels for b in [x for x in all_bags if x.relation == r][:3]]
    with one_thread():
        scores = score_bags(model, bags, CFG)
        found = identify_all(scores, CFG, "ig")
        neurons = {k: v for rn in found.values() for k, v in rn.neurons.items()}
        inputs = AnalysisInputs(model, bags, neurons, None, CFG, scores=scores)
        result = run(inputs)
    return model, bags, scores, found, neurons, result


def test_every_method_and_measure(setup):
    _, bags, _, _, neurons, result = setup
    d = json.loads(json.dumps(result.to_dict()))
    assert d["schema"] == "localize" and "localize" in ANALYSIS_NAMES
    want = [b.key for b in bags]  # every fact; one without ig neurons is relaxed
    assert d["relaxed_facts"] == [k for k in want if not neurons.get(k)]
    assert d["n_facts"] == len(want) >= 4 and d["keys"] == want
    assert [f["key"] for f in d["facts"]] == want
    assert list(d["methods"]) == list(METHODS)
    for m in METHODS:
        s = d["methods"][m]
        assert s["n_facts"] == len(want)
        for name in MEASURES:
            assert name in s
        for name in ("suppress_own", "suppress_same_relation", "suppress_other_relations"):
            assert s[name] is not None and math.isfinite(s[name])
        assert s["heldout_suppress"] is not None and 0 <= s["flips_own"] <= 1
        assert s["specificity"] == pytest.approx(
            sum(
                f["measures"][m]["suppress_same_relation"] - f["measures"][m]["suppress_own"]
                for f in d["facts"]
            )
            / len(want)
        )
    assert d["methods"]["random"]["spearman_with_ig"] is None
    assert d["methods"]["ig"]["overlap_with_ig"] == 1.0
    for m in ("grad_x_act", "ig_mean_baseline", "ig_contrastive"):
        assert d["methods"][m]["seconds_per_fact"] > 0
    assert set(d["settings"]["not_timed"]) == {"ig", "activation"}


def test_random_does_nothing_and_ig_does(setup):
    result = setup[-1]
    rnd, ig = result.methods["random"], result.methods["ig"]
    assert abs(rnd.suppress_own) < 3 and abs(rnd.heldout_suppress) < 3
    assert ig.suppress_own < -10 and ig.suppress_own < rnd.suppress_own - 10


def test_ig_is_the_stored_ig_and_counts_are_igs(setup):
    model, bags, _, found, neurons, result = setup
    for f in result.facts:
        ig = neurons[f.key]
        assert f.neurons["ig"] == [(n.layer, n.index) for n in ig]
        assert f.n_neurons == len(ig) and f.p == found[f.relation].p
        ctrl = random_control(ig, model.cfg.d_mlp, CFG.seed, f.key)
        assert f.neurons["random"] == [(n.layer, n.index) for n in ctrl]
        for m in METHODS:
            assert len(f.neurons[m]) == len(ig), (f.key, m)
            assert len(set(f.neurons[m])) == len(ig)


def test_own_suppression_matches_its_definition(setup):
    model, bags, _, _, _, result = setup
    f = result.facts[0]
    bag = next(b for b in bags if b.key == f.key)
    enc = encode_facts(model, list(bag.prompts), [bag.object] * len(bag.prompts))
    base, top0 = scaled_answer_reads(model, enc, [], None)
    for m in ("ig", "grad_x_act", "random"):
        ns = [Neuron(a, b) for a, b in f.neurons[m]]
        probs, top = scaled_answer_reads(model, enc, ns, 0.0)
        want = change_pct(float((probs - base).mean()), float(base.mean()))
        assert f.measures[m]["suppress_own"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert f.measures[m]["flips_own"] == pytest.approx(float((top != top0).float().mean()))


def test_foils_are_seeded_and_from_the_same_relation(setup):
    model, bags, _, _, _, result = setup
    shuffled = list(bags)
    random.Random(3).shuffle(shuffled)
    for f in result.facts:
        bag = next(b for b in bags if b.key == f.key)
        same = {b.object for b in bags if b.relation == bag.relation} - {bag.object}
        assert f.foils and set(f.foils) <= same and len(f.foils) == min(3, len(same))
        assert pick_foils(model, bags, bag, 3, CFG.seed) == f.foils
        assert pick_foils(model, shuffled, bag, 3, CFG.seed) == f.foils  # not the facts' order
        assert set(f.same_keys) <= {b.key for b in bags if b.relation == f.relation} - {f.key}
        assert all(k.split("/")[0] != f.relation for k in f.other_keys)
    draws = {
        tuple(pick_foils(None, bags, bags[0], 1, seed)) for seed in range(20)
    }  # the seed matters
    assert len(draws) > 1


def test_localize_keys_and_errors(setup):
    model, bags, scores, *_ = setup
    with one_thread():
        res = localize(model, bags, scores, CFG, keys=[bags[0].key])
    assert res.n_facts == 1 and res.keys == [bags[0].key]
    with pytest.raises(ValueError, match="stored attribution scores"):
        localize(model, bags, [], CFG)


def test_scores_missing_from_the_store_are_computed_and_timed(setup):
    model, bags, scores, _, _, result = setup
    bare = [replace(s, scores={"activation": s.scores["activation"]}) for s in scores]
    with one_thread():
        res = localize(model, bags, bare, CFG, keys=[result.keys[0]])
    (f,) = res.facts
    assert f.neurons["ig"] == result.facts[0].neurons["ig"]
    assert f.measures["ig"]["seconds_per_fact"] > 0
    assert res.settings["not_timed"] == ["activation"]


def test_a_fact_without_ig_neurons_gets_the_most_shared_ones(setup):
    """When the paper's refinement keeps no ig neuron for a fact, localize lowers the sharing
    threshold for that fact only: its ig neurons are those coarse in the most prompts, every
    method keeps that many, and the fact is listed in ``relaxed_facts``."""
    model, bags, scores, _, neurons, result = setup
    target = scores[0]
    n = target.n_prompts
    assert n >= 3
    # each prompt's one coarse neuron is its own, except that (3, 7) is also coarse in prompt 1:
    # shared by 2 prompts, below the floor of 3, so refinement keeps nothing
    own = [(0, 10 + i, 1.0) for i in range(n)]
    prompts = [PromptScores(1.0, (own[i],) + (((3, 7, 0.5),) if i < 2 else ())) for i in range(n)]
    prompts = [PromptScores(p.max_score, tuple(sorted(p.neurons))) for p in prompts]
    edited = [replace(target, scores={**target.scores, "ig": prompts}), *scores[1:]]
    with one_thread():
        res = localize(model, bags, edited, CFG, keys=[target.key])
    assert res.relaxed_facts == [target.key] and res.n_facts == 1
    (f,) = res.facts
    assert f.ig_relaxed and f.neurons["ig"] == [(3, 7)]
    assert all(len(f.neurons[m]) == 1 for m in METHODS)
    for m in METHODS:
        assert f.measures[m]["suppress_own"] is not None
    assert not any(g.ig_relaxed for g in result.facts if neurons.get(g.key))


def test_selection_fills_up_to_the_count():
    def ps(*ns):
        return PromptScores(max(s for *_, s in ns), tuple(ns))

    # neuron (0, 1) is coarse in every prompt; (0, 2) in one; (1, 3) scores low everywhere
    rec = BagScores(
        "R/0",
        "R",
        0,
        "x",
        3,
        2,
        4,
        0.1,
        3,
        {"ig": [ps((0, 1, 1.0), (0, 2, 0.9)), ps((0, 1, 1.0), (1, 3, 0.15)), ps((0, 1, 1.0))]},
    )
    assert select_neurons(rec, "ig", 0.2, 0.7, 3, 1) == [Neuron(0, 1)]
    # refinement gives one; the rest come by summed score
    assert select_neurons(rec, "ig", 0.2, 0.7, 3, 3) == [Neuron(0, 1), Neuron(0, 2), Neuron(1, 3)]
    assert summed_scores(rec, "ig")[Neuron(0, 1)] == pytest.approx(3.0)


def test_overlap_measures():
    a, b = [Neuron(0, 1), Neuron(0, 2)], [Neuron(0, 2), Neuron(1, 0)]
    assert jaccard(a, b) == pytest.approx(1 / 3) and math.isnan(jaccard([], []))
    x = {Neuron(0, i): float(i) for i in range(5)}
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, {k: -v for k, v in x.items()}) == pytest.approx(-1.0)
    assert math.isnan(spearman({Neuron(0, 0): 1.0}, {}))
    # against a plain reference: Pearson's correlation of mean ranks (ties share their mean)
    y = {Neuron(0, 1): 2.0, Neuron(0, 3): 2.0, Neuron(1, 7): 0.5}
    keys = list(dict.fromkeys([*x, *y]))
    xs, ys = [x.get(k, 0.0) for k in keys], [y.get(k, 0.0) for k in keys]

    def ranks(v):
        return [sum(1 for w in v if w < u) + (sum(1 for w in v if w == u) + 1) / 2 for u in v]

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert spearman(x, y) == pytest.approx(cov / var)


def test_report_table_rows_and_figure(setup):
    d = setup[-1].to_dict()
    a = ANALYSES["localize"]
    assert a.needs_scores and a.name == "localize"
    header, rows = a.table(d, {})
    assert len(rows) == len(METHODS) and len(header) == len(rows[0])
    assert a.rows(d, a.paper, {})
    fig = a.figures[0](d, a.paper)
    assert len(fig.data) == len(METHODS)
