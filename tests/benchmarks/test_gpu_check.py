"""``benchmarks/gpu.sh --device cpu``: the GPU check's dry run, on tiny models, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kn_lens.models.backend import HAS_HOOKED_CLASSES

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_its_figures(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "gpu.json").read_text())
    assert summary["device"] == "cpu"
    # the CUDA tests were collected and ran (skipped without a GPU), not silently missed
    tests = summary["cuda_tests"]
    assert tests["exit_code"] == 0 and tests.get("skipped", 0) >= 2
    enc = summary["encoder"]["tiny"]
    assert enc["kn_lens_s_per_prompt_one_at_a_time"] > 0 and enc["projected_pararel_hours"] > 0
    if enc["knowledge_neurons_s_per_prompt"] is not None:  # knowledge-neurons installed
        assert enc["pearson"] > 0.99 and enc["speedup_bag"] > 0
    dec = summary["decoder"]
    if HAS_HOOKED_CLASSES:
        assert dec["pearson"] > 0.999 and dec["speedup"] > 0
    else:  # the decoder benchmark builds a HookedTransformer: skipped, and said so
        assert "TransformerLens 3" in dec["skipped"]
    for name in ("encoder.json", "decoder.json", "cuda_tests.log"):
        assert (out / name).is_file()
