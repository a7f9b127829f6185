"""The registry's shape: every analysis module exports its entry; the controls are drawn once."""

from __future__ import annotations

import inspect
import json
import random

import pytest

import kn_lens.experiments as experiments
from kn_lens.errors import KnLensError
from kn_lens.experiments import (
    ANALYSES,
    Analysis,
    distant,
    erase,
    heldout,
    identify,
    localize,
    modify,
    trigger,
    update,
)
from kn_lens.experiments.controls import any_layers, random_control, same_layers, seeded_rng
from kn_lens.experiments.registry import AnalysisInputs
from kn_lens.neuron import Neuron
from kn_lens.rundir import RunDir

MODULES = (identify, modify, heldout, localize, distant, trigger, update, erase)


def test_registry_collects_each_module_entry_in_order():
    assert list(ANALYSES) == [
        "identify",
        "modify",
        "heldout",
        "localize",
        "distant",
        "trigger",
        "update",
        "erase",
    ]
    for m in MODULES:
        entry = m.ANALYSIS
        assert isinstance(entry, Analysis)
        assert ANALYSES[entry.name] is entry
        assert entry.run is m.run and entry.paper is m.PAPER and entry.rows is m.report_rows
        assert inspect.signature(m.run).parameters.keys() == {"inputs"}
    # the package only collects: no adapter functions of its own
    own = [
        n
        for n, v in vars(experiments).items()
        if inspect.isfunction(v) and v.__module__ == experiments.__name__
    ]
    assert own == []


def test_no_analysis_writes_files():
    for m in MODULES:
        src = inspect.getsource(m)
        for word in ("open(", "write_text", "mkdir", ".replace(path"):
            assert word not in src, f"{m.__name__} uses {word}"


def test_run_needs_a_model_and_web_sentences():
    x = AnalysisInputs(None, [])
    with pytest.raises(KnLensError, match="needs a model"):
        modify.run(x)
    with pytest.raises(KnLensError, match="needs a model"):
        trigger.run(x)
    with pytest.raises(KnLensError, match="needs web sentences"):
        x.require_web()


# --- the controls, as each analysis drew them before they moved here -------------------------


def _old_same_layers(neurons, d_mlp, seed, key):
    rng = random.Random(f"{seed}:random-control:{key}")
    taken, out = set(neurons), []
    for n in neurons:
        if d_mlp - sum(1 for t in taken if t.layer == n.layer) <= 0:
            continue
        while True:
            r = Neuron(n.layer, rng.randrange(d_mlp))
            if r not in taken:
                taken.add(r)
                out.append(r)
                break
    return out


def _old_any_layers(neurons, n_layers, d_mlp, rng):
    exclude, out = set(neurons), []
    while len(out) < len(neurons):
        n = Neuron(rng.randrange(n_layers), rng.randrange(d_mlp))
        if n not in exclude:
            exclude.add(n)
            out.append(n)
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_controls_draw_as_before(seed):
    gen = random.Random(seed)
    for i in range(30):
        n_layers, d_mlp = gen.randint(1, 4), gen.randint(2, 8)
        ns = list(
            dict.fromkeys(
                Neuron(gen.randrange(n_layers), gen.randrange(d_mlp))
                for _ in range(gen.randint(0, 6))
            )
        )
        key = f"P{i}/{seed}"
        assert random_control(ns, d_mlp, seed, key) == _old_same_layers(ns, d_mlp, seed, key)
        assert same_layers(ns, d_mlp, seeded_rng(seed, "random-control", key)) == (
            _old_same_layers(ns, d_mlp, seed, key)
        )
        # update continues the fact's generator; erase seeds one per relation
        a, b = random.Random(f"{seed}:fact:{key}"), seeded_rng(seed, "fact", key)
        a.random(), b.random()
        if len(ns) * 2 <= n_layers * d_mlp:
            assert any_layers(ns, n_layers, d_mlp, b) == _old_any_layers(ns, n_layers, d_mlp, a)
            assert a.random() == b.random()
        ctrl = random_control(ns, d_mlp, seed, key)
        assert not set(ctrl) & set(ns) and len(set(ctrl)) == len(ctrl)


def test_any_layers_refuses_an_impossible_draw():
    ns = [Neuron(0, 0), Neuron(0, 1)]
    with pytest.raises(KnLensError, match="cannot draw 2 random neurons"):
        any_layers(ns, 1, 3, seeded_rng(0, "x"))


def test_run_folder_writes_the_details(tmp_path):
    d = RunDir(tmp_path)
    recs = [{"key": "P1/0", "top": [{"prompt": "é [MASK]", "score": 1.5}]}, {"key": "P1/1"}]
    path = d.save_details("trigger", trigger.detail_records({"facts": recs}))
    assert path == tmp_path / "trigger_prompts.jsonl"
    text = path.read_text(encoding="utf-8")
    assert "é" in text and [json.loads(x) for x in text.splitlines()] == recs
