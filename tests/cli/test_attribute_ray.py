"""``kn-lens attribute --executor ray`` on the default model: the facts and scores of a plain run.

One Ray run (a local Ray instance starts in ~10 s), compared record by record with a local run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kn_lens import cli
from kn_lens.store import read_jsonl

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'kn-lens[ray]')")

ARGS = ["--max-bags", "2", "--steps", "4", "--no-progress", "-q"]


def _records(out: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    keys: list[str] = []
    recs: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "attribution").glob("*.jsonl")):
        for rec in read_jsonl(path):
            keys.append(rec["key"])
            recs[rec["key"]] = rec
    return keys, recs


def _close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_ray_executor_scores_the_facts_of_a_plain_run(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert cli.main(["attribute", *ARGS, "--out", str(tmp_path / "local")]) == 0
        assert (
            cli.main(["attribute", *ARGS, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
        )
    finally:
        torch.set_num_threads(threads)
    local_keys, local = _records(tmp_path / "local")
    ray_keys, ray = _records(tmp_path / "ray")
    assert len(local_keys) > 2
    assert sorted(ray_keys) == sorted(local_keys)  # the same facts
    assert len(set(ray_keys)) == len(ray_keys)  # each written once
    for key, rec in local.items():
        _close(rec, ray[key], key)  # the same scores, within 1e-6 relative
    # A second Ray run finds everything stored and starts no actor.
    assert cli.main(["attribute", *ARGS, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert sorted(_records(tmp_path / "ray")[0]) == sorted(local_keys)
