"""``benchmarks/dtype_neurons.py``: lower precision against float32, on a tiny sample, resumable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "dtype_neurons", REPO / "benchmarks" / "dtype_neurons.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dtype_neurons_measures_and_resumes(tmp_path, capsys):
    script = load_script()
    out, summary = tmp_path / "dtype.jsonl", tmp_path / "summary.json"
    args = ["--max-bags", "2", "--relations", "W01", "--steps", "3", "--dtypes", "bfloat16"]
    n = torch.get_num_threads()
    try:
        assert script.main([*args, "--out", str(out), "--json", str(summary)]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(rows) == 2 and len({r["key"] for r in rows}) == 2
        for r in rows:
            assert set(r["seconds"]) == {"float32", "bfloat16"} and min(r["seconds"].values()) > 0
            assert r["pearson"]["bfloat16"] > 0.99  # an approximation that tracks float32
            assert r["identical"]["bfloat16"] == (
                r["neurons"]["bfloat16"] == r["neurons"]["float32"]
            )
        s = json.loads(summary.read_text())["dtypes"]["bfloat16"]
        assert s["identical_neurons"] == sum(r["identical"]["bfloat16"] for r in rows)
        assert s["speed_vs_float32"] > 0
        # a rerun measures nothing again and gives the same summary
        assert script.main([*args, "--out", str(out)]) == 0
        assert len(out.read_text().splitlines()) == 2
        assert "0 to measure" in capsys.readouterr().out
    finally:
        torch.set_num_threads(n)
