"""``kn-lens localize`` on a tiny run folder, and ``reproduce`` running it."""

from __future__ import annotations

import json

from kn_lens import cli
from kn_lens.cli.parser import build_parser
from kn_lens.config import ANALYSIS_NAMES
from kn_lens.experiments.localize import MEASURES, METHODS
from tests.cli.helpers import base_args, write_facts


def test_localize_command_on_a_tiny_run(tmp_path, tiny_ckpt):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=3)
    out = tmp_path / "out"
    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "2")]) == 0
    assert cli.main(["identify", "--out", str(out), "--no-progress", "-q"]) == 0
    rc = cli.main(["localize", "--out", str(out), "--device", "cpu", "--no-progress", "-q"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    loc = doc["results"]["localize"]
    neurons = json.loads((out / "neurons.json").read_text())["neurons"]["ours"]
    with_neurons = [k for k, v in neurons.items() if v]
    assert loc["n_facts"] == len(with_neurons) and sorted(loc["keys"]) == sorted(with_neurons)
    assert list(loc["methods"]) == list(METHODS)
    for m in METHODS:
        assert set(MEASURES) <= set(loc["methods"][m])
    assert doc["meta"]["timings"]["localize"] >= 0
    assert cli.main(["plot", "--out", str(out), "-q"]) == 0
    assert (out / "figures" / "localize.html").is_file()
    md = (out / "report.md").read_text()
    assert "ig_contrastive" in md and "Six ways to localise a fact" in md


def test_reproduce_lists_and_runs_localize(tmp_path, tiny_ckpt, capsys):
    assert ANALYSIS_NAMES.index("localize") == ANALYSIS_NAMES.index("heldout") + 1
    parser = build_parser()
    sub = next(
        a for a in parser._actions if getattr(a, "choices", None) and "localize" in a.choices
    )
    assert "localize" in sub.choices["reproduce"].format_help()
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=2)
    out = tmp_path / "out"
    skip = [
        x
        for s in ("modify", "heldout", "distant", "trigger", "update", "erase")
        for x in ("--skip", s)
    ]
    args = base_args(tiny_ckpt, facts, out, "--steps", "2", *skip)
    assert cli.main(["reproduce", *args]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"identify", "localize"}
