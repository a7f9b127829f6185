"""``benchmarks/attribution_methods.py``: every method timed on the same facts, with its agreement
with IG (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_methods_benchmark_runs_and_writes_its_figures(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "attribution_methods", REPO / "benchmarks" / "attribution_methods.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "m.json"
    n = torch.get_num_threads()
    try:
        assert script.main(["--max-bags", "2", "--steps", "3", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    fig = json.loads(out.read_text())
    assert fig["facts"] == 2
    assert set(fig["seconds_per_fact_median"]) == {"ig", "grad_x_act", "activation"}
    assert all(len(v) == 2 and min(v) > 0 for v in fig["seconds_all"].values())
    assert fig["speedup_over_ig"]["ig"] == 1.0
    for m in ("grad_x_act", "activation"):
        assert -1 <= fig["spearman_with_ig_median"][m] <= 1
        assert 0 <= fig["top20_overlap_with_ig_median"][m] <= 1
