"""Knowledge-neuron activation on web prompts (distant) and activating prompts (trigger)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kn_lens.data.web import build_web_prompts, web_facts_from_dict
from kn_lens.errors import KnLensError
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.distant import PAPER, DistantResult, distant_activation
from kn_lens.experiments.trigger import activating_prompts, detail_records
from kn_lens.interventions import grouped_activations, neuron_activations
from kn_lens.models import DEFAULT_MODEL_DIR
from kn_lens.neuron import Neuron
from kn_lens.rundir import RunDir


def _toy_web():
    web = {
        "P19": [
            {
                "th_bags": [
                    "Alice was born in Paris .",
                    "Alice , a doctor , left Paris .",
                    "Alice was born in the city of Paris , the capital of the country .",
                ],
                "h_bags": ["Alice is a doctor .", "Alice works as a lawyer in London ."],
            },
            {"th_bags": ["Bob was born in London ."], "h_bags": ["Bob is an actor ."]},
            {"th_bags": ["Zor was born in Rome ."], "h_bags": []},
        ],
        "P27": [
            {
                "th_bags": ["Mur is from Berlin .", "Mur speaks German in Berlin ."],
                "h_bags": ["Mur is an actor .", "Mur was born ."],
            },
        ],
    }
    qp = {
        "P19": [["Alice", "Paris"], ["Bob", "London"], ["Zor", "Rome"]],
        "P27": [["Mur", "Berlin"]],
    }
    return web_facts_from_dict(web, qp)


NEURONS = {
    "P19/0": [Neuron(0, 1), Neuron(1, 5)],
    "P19/1": [Neuron(1, 3)],
    "P19/2": [Neuron(0, 7)],
    "P27/0": [Neuron(1, 60), Neuron(0, 1)],
    "P19/9": [Neuron(0, 0)],
    "P27/5": [],
}
BASELINE = {"P19/0": [Neuron(0, 2)], "P27/0": [Neuron(1, 1), Neuron(1, 2)]}


def test_grouped_activations_match_one_by_one(tiny_model):
    items = [
        (["Alice was born in [MASK] .", "the [MASK] of Paris ."], [Neuron(0, 3), Neuron(1, 4)]),
        (["Bob is a [MASK] ."], [Neuron(1, 4)]),
        (["[MASK] speaks French and English in London and Paris ."] * 3, [Neuron(0, 9)]),
        (["a [MASK] ."], [Neuron(1, 10), Neuron(1, 10), Neuron(0, 3)]),
    ]
    got = grouped_activations(tiny_model, items, batch_size=3)
    assert len(got) == len(items)
    for (prompts, ns), g in zip(items, got, strict=False):
        ref = neuron_activations(tiny_model, prompts, ns)
        assert g.shape == (len(prompts), len(ns))
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)


def test_distant_activation_on_tiny_model(tiny_model):
    wf = _toy_web()
    res = distant_activation(tiny_model, wf, NEURONS, baseline=BASELINE)
    assert isinstance(res, DistantResult)
    assert [f.key for f in res.facts] == ["P19/0", "P19/1", "P27/0"]
    assert res.skipped_facts == {
        "P19/2": "no_T2_prompts",
        "P19/9": "no_web_sentences",
        "P27/5": "no_neurons",
    }
    # the fact value is the mean over its prompts and neurons, read through the hooks
    ps = build_web_prompts(wf, keys=["P19/0"], seed=0).facts[0]
    ref = neuron_activations(tiny_model, list(ps.t1), NEURONS["P19/0"]).mean()
    alice = res.facts[0]
    assert alice.n_prompts == {"T1": 3, "T2": 2, "T3": 3}
    assert alice.ours["T1"] == pytest.approx(float(ref), abs=1e-5)
    ref_b = neuron_activations(tiny_model, list(ps.t3), BASELINE["P19/0"]).mean()
    assert alice.baseline is not None
    assert alice.baseline["T3"] == pytest.approx(float(ref_b), abs=1e-5)
    assert res.facts[1].baseline is None and res.facts[1].n_baseline_neurons == 0
    # aggregates
    assert res.overall.n_facts == 3 and res.overall.n_facts_baseline == 2
    assert res.overall.ours["T2"] == pytest.approx(sum(f.ours["T2"] for f in res.facts) / 3)
    assert set(res.per_relation) == {"P19", "P27"}
    assert res.per_relation["P27"].ours["T1"] == pytest.approx(res.facts[2].ours["T1"])
    assert math.isnan(res.per_relation["P27"].ours_sem["T1"])  # one fact: no standard error
    assert res.prompt_counts["T1"]["built"] == 3 + 1 + 2
    assert "paper" not in res.to_dict()  # the paper's numbers live in the registry only
    assert ANALYSES["distant"].paper["ours"] == PAPER["ours"]
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema"] == "distant" and d["per_relation"]["P27"]["ours_sem"]["T1"] is None
    # reproducible
    again = distant_activation(tiny_model, wf, NEURONS, baseline=BASELINE)
    assert again.to_dict() == res.to_dict()


def test_distant_rejects_bad_neurons(tiny_model):
    with pytest.raises(ValueError, match="L5.N0"):
        distant_activation(tiny_model, _toy_web(), {"P19/0": [Neuron(5, 0)]})


def test_distant_figure(tiny_model, tmp_path):
    from kn_lens.plots import distant_figure, save_figure

    res = distant_activation(tiny_model, _toy_web(), NEURONS, baseline=BASELINE)
    fig = distant_figure(res.to_dict(), PAPER)
    names = [t.name for t in fig.data]
    assert len(fig.data) == 3 and any("baseline" in n for n in names) and "paper" in names[-1]
    assert list(fig.data[0].x) == ["T1", "T2", "T3"]
    assert save_figure(fig, tmp_path / "distant")["html"].endswith(".html")


def test_activating_prompts_rank_and_jsonl(tiny_model, tmp_path):
    wf = _toy_web()
    res = activating_prompts(tiny_model, wf, NEURONS, k=2)
    assert res.k == 2 and res.types == ("T1", "T2")
    by = {f.key: f for f in res.facts}
    assert set(by) == {"P19/0", "P19/1", "P19/2", "P27/0"}
    alice = by["P19/0"]
    assert alice.n_ranked == 5
    assert [p.score for p in alice.top] == sorted([p.score for p in alice.top], reverse=True)
    assert [p.score for p in alice.bottom] == sorted([p.score for p in alice.bottom])
    assert alice.top[0].score >= alice.bottom[-1].score
    # score = summed activation of the fact's neurons at [MASK]
    a = neuron_activations(tiny_model, [alice.top[0].prompt], NEURONS["P19/0"]).sum()
    assert alice.top[0].score == pytest.approx(float(a), abs=1e-5)
    assert by["P19/1"].n_ranked == 2 and len(by["P19/1"].top) == 2
    assert {p.type for f in res.facts for p in f.top} <= {"T1", "T2"}
    assert 0.0 <= res.top_t1_share <= 1.0
    path = RunDir(tmp_path).save_details("trigger", detail_records(res.to_dict()))
    assert path.name == "trigger_prompts.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [rec["key"] for rec in lines] == [f.key for f in res.facts]
    assert lines[0]["top"][0]["prompt"].count("[MASK]") == 1
    with pytest.raises(KnLensError):
        activating_prompts(tiny_model, wf, NEURONS, types=("T4",))
    from kn_lens.plots import trigger_figure

    fig = trigger_figure(res.to_dict(), {})
    assert list(fig.data[0].y) == [
        pytest.approx(res.top_t1_share),
        pytest.approx(res.bottom_t1_share),
    ]


# --- the default model ------------------------------------------------------------------------

needs_default = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "config.json").is_file(),
    reason="default model not built yet (kn_lens/default_model/)",
)


@needs_default
def test_default_model_t1_exceeds_t3():
    """On the default model, knowledge neurons fire on T1 and not on T2/T3.

    Measured on the shipped checkpoint (the first 2 facts of each of the 14 relations, IG
    steps=10): T1 0.762, T2 -0.005, T3 -0.013 (means over 28 facts); 26 of 28 facts have T1 above
    T3. The margins below are well under the measured gaps, so numerical noise cannot flip them.
    """
    from kn_lens import load_model
    from kn_lens.config import PaperConfig
    from kn_lens.data import default_facts
    from kn_lens.data.web import default_web_facts
    from kn_lens.knowledge_neurons import find_knowledge_neurons

    model = load_model("default", device="cpu")
    wf = default_web_facts()
    cfg = PaperConfig(steps=10)
    bags = {b.key: b for b in default_facts()}
    keys = [f"W{r:02d}/{i}" for r in range(1, 15) for i in (0, 1) if f"W{r:02d}/{i}" in bags]
    neurons = {k: find_knowledge_neurons(model, bags[k], config=cfg) for k in keys}
    neurons = {k: v for k, v in neurons.items() if v}
    assert len(neurons) >= 20
    res = distant_activation(model, wf, neurons, bags=list(bags.values()), config=cfg)
    assert res.overall.n_facts == len(neurons)
    ours = res.overall.ours
    assert ours["T1"] > ours["T3"] + MARGIN_T1_T3
    assert ours["T1"] > ours["T2"] + MARGIN_T1_T3
    assert abs(ours["T3"]) < 0.1 and abs(ours["T2"]) < 0.1
    assert sum(f.ours["T1"] > f.ours["T3"] for f in res.facts) >= 0.8 * len(res.facts)


MARGIN_T1_T3 = 0.35  # measured differences: 0.77 (T1 - T3), 0.77 (T1 - T2)


def test_activating_prompts_refuse_non_integer_neurons(tiny_model):
    """A neuron given as floats is refused, not rounded to another neuron."""
    bad = {**NEURONS, "P19/0": [Neuron(1, 2.7)]}  # type: ignore[arg-type]
    with pytest.raises(KnLensError, match="2.7"):
        activating_prompts(tiny_model, _toy_web(), bad, k=2)
