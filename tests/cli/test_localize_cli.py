"""``kn-lens localize`` on a tiny run folder, and ``reproduce`` running it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from kn_lens import cli
from kn_lens.cli.parser import build_parser
from kn_lens.config import ANALYSIS_NAMES
from kn_lens.experiments.localize import MEASURES, METHODS
from kn_lens.store import read_jsonl
from tests.cli.helpers import REPO, base_args, write_facts


def test_localize_command_on_a_tiny_run(tmp_path, tiny_ckpt):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=3)
    out = tmp_path / "out"
    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "2")]) == 0
    assert cli.main(["identify", "--out", str(out), "--no-progress", "-q"]) == 0
    rc = cli.main(
        ["localize", "--out", str(out), "--device", "cpu", "--no-progress", "-q"]
        + ["--set", "known_share=0"]  # the tiny model knows none of the facts
    )
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
    args = base_args(tiny_ckpt, facts, out, "--steps", "2", "--set", "known_share=0", *skip)
    assert cli.main(["reproduce", *args]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"identify", "localize"}


def _measures_without_time(loc: dict) -> dict:
    """The localize result with every ``seconds_per_fact`` (a timing) taken out."""
    doc = json.loads(json.dumps(loc))
    for s in doc["methods"].values():
        s.pop("seconds_per_fact")
    for f in doc["facts"]:
        for ms in f["measures"].values():
            ms.pop("seconds_per_fact")
    return doc


def test_localize_killed_midway_resumes_to_the_uninterrupted_result(tmp_path, tiny_ckpt):
    """kill -9 after the first fact records: the rerun measures only the rest, no fact twice, and
    gives the result of a run never interrupted; slices (``localize_max_new``) give it too."""
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=4)
    ref = tmp_path / "ref"
    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, ref, "--steps", "2")]) == 0
    assert cli.main(["identify", "--out", str(ref), "--no-progress", "-q"]) == 0
    killed, sliced = tmp_path / "killed", tmp_path / "sliced"
    shutil.copytree(ref, killed)
    shutil.copytree(ref, sliced)
    args = ["--device", "cpu", "--threads", "1", "--no-progress", "-q", "--set", "known_share=0"]
    assert cli.main(["localize", "--out", str(ref), *args]) == 0
    want = json.loads((ref / "results.json").read_text())["results"]["localize"]
    n_facts = want["n_facts"]
    assert n_facts >= 4
    log_lines = (ref / "localize_facts.jsonl").read_text().splitlines()
    assert len(log_lines) == n_facts

    cmd = [sys.executable, "-m", "kn_lens", "localize", "--out", str(killed), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log_file = killed / "localize_facts.jsonl"
    killed_at = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(read_jsonl(log_file))
            if n >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert killed_at is not None, f"localize ended before it could be killed: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    before = [r["key"] for r in read_jsonl(log_file)]
    assert 1 <= len(before) < n_facts, "killed too late to test resuming"
    assert "localize" not in json.loads((killed / "results.json").read_text())["results"]
    with open(log_file, "ab") as f:  # a kill in the middle of a write leaves a torn line
        f.write(b'{"id": "P37/3@0", "key": "P37/3", "fact": {"measures": ')
    assert cli.main(["localize", "--out", str(killed), *args]) == 0
    keys = [r["key"] for r in read_jsonl(log_file)]
    assert len(keys) == len(set(keys)) == n_facts and keys[: len(before)] == before
    got = json.loads((killed / "results.json").read_text())["results"]["localize"]
    assert _measures_without_time(got) == _measures_without_time(want)
    kept = {r["key"]: r for r in read_jsonl(log_file)}
    for f in got["facts"]:  # a resumed fact keeps the seconds measured when it was computed
        assert (
            f["measures"]["grad_x_act"]["seconds_per_fact"]
            == (kept[f["key"]]["fact"]["measures"]["grad_x_act"]["seconds_per_fact"])
        )

    # In slices of 3 facts: partial results first, then the same result.
    sliced_args = ["localize", "--out", str(sliced), *args, "--set", "localize_max_new=3"]
    assert cli.main(sliced_args) == 0
    part = json.loads((sliced / "results.json").read_text())["results"]["localize"]
    assert part["n_facts"] == 3
    assert list(part["skipped_facts"].values()).count("not_yet_measured") == n_facts - 3
    assert len({want["facts"][want["keys"].index(k)]["relation"] for k in part["keys"]}) > 1
    for _ in range(n_facts):
        assert cli.main(sliced_args) == 0
        part = json.loads((sliced / "results.json").read_text())["results"]["localize"]
        if part["n_facts"] == n_facts:
            break
    assert _measures_without_time(part) == _measures_without_time(want)
    # A second run keeps every record and measures nothing.
    assert cli.main(["localize", "--out", str(sliced), *args]) == 0
    assert len(read_jsonl(sliced / "localize_facts.jsonl")) == n_facts
