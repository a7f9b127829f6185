"""The attribution store through ``kn-lens attribute``: resume, shards, kill -9, concurrent shard
processes; every fact stored exactly once (a cheap stand-in scorer where scores do not matter)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from kn_lens.store import read_jsonl, read_union, relation_files
from tests.cli.helpers import (
    RELATIONS,
    REPO,
    _assert_clean_error,
    all_keys,
    base_args,
    main_fake,
    write_facts,
)


def test_attribute_resume_and_shards(tmp_path, tiny_ckpt, facts, monkeypatch):
    out = tmp_path / "o"
    # Two shards, as independent runs: disjoint files, union = every fact once.
    for k in (1, 2):
        assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out, "--shard", f"{k}/2")]) == 0
    names = sorted(p.name for p in (out / "attribution").glob("*.jsonl"))
    assert names == sorted(f"{r}.shard{k}of2.jsonl" for r in RELATIONS for k in (1, 2))
    keys = all_keys(out)
    assert sorted(keys) == sorted(f"{r}/{i}" for r in RELATIONS for i in range(4))
    # Global order i % 2 == K-1: shard 1 holds facts 0, 2, 4, ... of the global order.
    order = [f"{r}/{i}" for r in RELATIONS for i in range(4)]
    s1 = [r["key"] for f in (out / "attribution").glob("*.shard1of2.jsonl") for r in read_jsonl(f)]
    assert sorted(s1) == sorted(order[0::2])
    # Options recorded in run.json are reused: no --data / --model needed now.
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["data"] == str(facts)
    # An unsharded rerun finds everything done and writes nothing new.
    assert main_fake(["attribute", "--out", str(out), "--no-progress", "-q"]) == 0
    assert sorted(all_keys(out)) == sorted(keys)
    assert not (out / "attribution" / "P19.jsonl").exists() or not read_jsonl(
        out / "attribution" / "P19.jsonl"
    )


def test_attribute_resumes_after_torn_line(tmp_path, tiny_ckpt, facts, monkeypatch):
    out = tmp_path / "o"
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out, "--relations", "P19")]) == 0
    path = out / "attribution" / "P19.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    # Simulate a kill: last two facts lost, one half-written.
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0", "P19/1"]
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out, "--relations", "P19")]) == 0
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0", "P19/1", "P19/2", "P19/3"]
    assert path.read_text().endswith("\n")


def test_attribute_refuses_mixed_steps(tmp_path, tiny_ckpt, facts, monkeypatch, capsys):
    out = tmp_path / "o"
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "3")]) == 0
    rc = main_fake(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "5")])
    assert rc == 2
    _assert_clean_error(capsys, rc, "--steps 3")


def test_max_bags_sample_is_seeded_and_ordered(tmp_path, tiny_ckpt, monkeypatch):
    facts = write_facts(tmp_path / "f.jsonl", per_relation=8)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            main_fake(
                [
                    "attribute",
                    *base_args(tiny_ckpt, facts, out, "--max-bags", "3", "--relations", "P37"),
                ]
            )
            == 0
        )
        outs.append([r["key"] for r in read_jsonl(out / "attribution" / "P37.jsonl")])
    assert outs[0] == outs[1] and len(outs[0]) == 3
    assert outs[0] == sorted(outs[0], key=lambda k: int(k.split("/")[1]))


def test_kill_and_resume_exactly_once(tmp_path, tiny_ckpt):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=5)
    n_total = 3 * 5
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        "-m",
        "kn_lens",
        "attribute",
        "--model",
        str(tiny_ckpt),
        "--data",
        str(facts),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--steps",
        "4",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(all_keys(out)) if (out / "attribution").is_dir() else 0
            if n >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert killed_at is not None, f"run ended before it could be killed: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    before = all_keys(out)
    assert len(before) < n_total, "killed too late to test resume"
    # Also leave a torn line behind, as a kill in the middle of a write would.
    torn = out / "attribution" / "P106.jsonl"
    with open(torn, "ab") as f:
        f.write(b'{"key": "P106/4", "scores": {"ig": [')
    # Resume.
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == n_total
    assert set(before) <= set(keys)
    assert "already stored" in done.stderr
    # Every stored line is a whole record.
    for path in relation_files(out / "attribution", "P19"):
        assert path.read_bytes().endswith(b"\n")
    assert len(read_union(relation_files(out / "attribution", "P106"))) == 5


def test_pararel_data_attribute_with_shards(shared_data, tmp_path, tiny_ckpt, monkeypatch):
    out = tmp_path / "o"
    for k in (1, 2):
        assert (
            main_fake(
                [
                    "attribute",
                    *base_args(
                        tiny_ckpt,
                        shared_data,
                        out,
                        "--relations",
                        "P19",
                        "--max-bags",
                        "4",
                        "--shard",
                        f"{k}/2",
                    ),
                ]
            )
            == 0
        )
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) and 0 < len(keys) <= 4
    assert all(k.startswith("P19/") for k in keys)


def test_concurrent_shard_processes(tmp_path, tiny_ckpt):
    """Two shards as simultaneous processes: disjoint files, union = every fact exactly once."""
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=2)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kn_lens",
                "attribute",
                "--model",
                str(tiny_ckpt),
                "--data",
                str(facts),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--steps",
                "2",
                "--threads",
                "1",
                "--no-progress",
                "-q",
                "--shard",
                f"{k}/2",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    files = sorted(p.name for p in (out / "attribution").glob("*.jsonl"))
    assert files == sorted(f"{r}.shard{k}of2.jsonl" for r in RELATIONS for k in (1, 2))
    keys = all_keys(out)
    assert sorted(keys) == sorted(f"{r}/{i}" for r in RELATIONS for i in range(2))
    assert json.loads((out / "run.json").read_text())["options"]["data"] == str(facts)
