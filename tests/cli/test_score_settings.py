"""Every setting that changes the scores is in the fingerprint, however it is given (a flag or
``--set``), so a run with other settings scores its facts again instead of reusing them."""

from __future__ import annotations

import json
from pathlib import Path

from kn_lens import cli
from tests.cli.test_stale_scores import current, write


def run(tiny_ckpt: Path, facts: Path, out: Path, capsys, *extra: str) -> str:
    from tests.cli.helpers import base_args

    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "2", *extra)]) == 0
    return capsys.readouterr().err


def test_set_options_change_the_fingerprint(tmp_path, tiny_ckpt, capsys):
    facts, out = write(tmp_path / "f.jsonl", [("Alice", "Paris")]), tmp_path / "o"
    run(tiny_ckpt, facts, out, capsys)
    first = current(out)["P19/0"]
    for setting in ("steps=3", "baseline=mean", "objective=logprob"):
        run(tiny_ckpt, facts, out, capsys, "--set", setting)
        again = current(out)["P19/0"]
        assert again["fingerprint"] != first["fingerprint"], setting
        assert json.dumps(again["scores"]) != json.dumps(first["scores"]), setting
    # The same settings again: the stored scores are reused.
    lines = sum(len(p.read_text().splitlines()) for p in (out / "attribution").glob("*.jsonl"))
    run(tiny_ckpt, facts, out, capsys, "--set", "objective=logprob")
    after = sum(len(p.read_text().splitlines()) for p in (out / "attribution").glob("*.jsonl"))
    assert after == lines


def test_grad_x_act_neurons_through_the_pipeline(tmp_path, tiny_ckpt, capsys):
    """--set method=grad_x_act stores grad x act scores (and the activation baseline) under their
    own fingerprint, and identify finds our neurons from them."""
    from kn_lens.rundir import score_settings

    facts, out = write(tmp_path / "f.jsonl", [("Alice", "Paris")]), tmp_path / "o"
    run(tiny_ckpt, facts, out, capsys, "--set", "method=grad_x_act")
    rec = current(out)["P19/0"]
    assert set(rec["scores"]) == {"grad_x_act", "activation"}
    assert cli.main(["identify", "--set", "method=grad_x_act", "--out", str(out)]) == 0
    neurons = json.loads((out / "neurons.json").read_text())
    assert "P19/0" in neurons["neurons"]["ours"]
    from kn_lens.config import PaperConfig

    assert score_settings("m", PaperConfig(method="grad_x_act"))["method"] == "grad_x_act"
    assert "method" not in score_settings("m", PaperConfig())
