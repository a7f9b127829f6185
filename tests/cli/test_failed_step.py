"""A refused or failed step leaves DIR/run.json as it was (issue 21): the folder's defaults do not
change, and the command its error suggests still works."""

from __future__ import annotations

import json

from kn_lens import cli
from tests.cli.helpers import base_args, main_fake
from tests.conftest import make_tiny_checkpoint


def test_a_refused_step_does_not_rewrite_run_json(tmp_path, tiny_ckpt, facts, capsys):
    out = tmp_path / "o"
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out)]) == 0
    before = (out / "run.json").read_text()
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    rc = main_fake(["identify", "--model", str(other), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model" in err and "use the same options or another --out" in err
    assert (out / "run.json").read_text() == before
    assert json.loads(before)["options"]["model"] == str(tiny_ckpt)
    # The refused run changed no default: the folder's own options still work.
    assert main_fake(["attribute", "--out", str(out), "-q"]) == 0


def test_a_step_that_fails_midway_does_not_rewrite_run_json(tmp_path, tiny_ckpt, facts, capsys):
    out = tmp_path / "o"
    args = base_args(tiny_ckpt, facts, out, "--steps", "2", "--relations", "P19")
    assert cli.main(["attribute", *args]) == 0
    assert cli.main(["identify", "--out", str(out), "-q"]) == 0
    before = (out / "run.json").read_text()
    # Facts without stored scores: identify fails, naming what to run.
    rc = cli.main(["identify", "--relations", "P37", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "kn-lens attribute" in err
    assert (out / "run.json").read_text() == before
    # (the tiny model knows none of the facts: modify measures them all)
    modify = ["modify", "--out", str(out), "--device", "cpu", "-q", "--set", "known_share=0"]
    assert cli.main(modify) == 0
