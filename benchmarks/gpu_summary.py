"""Collect the figures of ``benchmarks/gpu.sh`` into one ``OUT/gpu.json``.

Reads ``OUT/encoder.json`` (``benchmarks/attribution.py``), ``OUT/decoder.json``
(``benchmarks/decoder_attribution.py``) and ``OUT/cuda_tests.log`` (pytest's summary line), and
adds the figures the GPU targets are stated in:

- the encoder speed-up over knowledge-neurons with prompts batched across a bag (kn_lens' cost per
  prompt when the timed prompts are scored as one bag, against knowledge-neurons one prompt at a
  time, which is the only way that package scores);
- the projected full-PARAREL attribution time on a bert-base shape: 253,448 prompts times kn_lens'
  measured cost per prompt in the largest bag timed (PARAREL bags hold 9.1 prompts on average);
- the decoder speed-up and score correlation, as the decoder benchmark reports them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

PARAREL_PROMPTS = 253_448  # 27,738 bags over 34 relations (../shared/data/README.md)
TARGETS = {
    "encoder_bag_speedup": 10.0,
    "pararel_gpu_hours": 2.0,
    "decoder_speedup": 8.0,
    "decoder_pearson": 0.999,
}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def pytest_counts(log: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 1, ...}`` from pytest's closing line."""
    return {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", log)
    }


def encoder_figures(enc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in enc.get("models", []):
        bag = m.get("bag_s_per_prompt") or {}
        largest = max(bag, key=lambda k: int(k)) if bag else None
        s_bag = bag[largest] if largest is not None else m["bag_s_per_prompt_same_prompts"]
        kn = m.get("kn_s_per_prompt")
        out[m["model"]] = {
            "kn_lens_s_per_prompt_one_at_a_time": m["ours_s_per_prompt"],
            "kn_lens_s_per_prompt_bag_same_prompts": m["bag_s_per_prompt_same_prompts"],
            "kn_lens_s_per_prompt_largest_bag": s_bag,
            "largest_bag": int(largest) if largest is not None else None,
            "knowledge_neurons_s_per_prompt": kn,
            "speedup_one_at_a_time": m.get("speedup"),
            "speedup_bag": kn / m["bag_s_per_prompt_same_prompts"] if kn else None,
            "pearson": m.get("pearson"),
            "projected_pararel_hours": PARAREL_PROMPTS * s_bag / 3600.0,
            "lower_precision": m.get("lower_precision") or [],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--tests-rc", type=int, required=True)
    ap.add_argument("--wall-s", type=float, required=True)
    args = ap.parse_args(argv)
    log_path = args.out / "cuda_tests.log"
    log = log_path.read_text() if log_path.is_file() else ""
    enc, dec = _read(args.out / "encoder.json"), _read(args.out / "decoder.json")
    summary: dict[str, Any] = {
        "device": args.device,
        "wall_s": args.wall_s,
        "cuda_tests": {"exit_code": args.tests_rc, **pytest_counts(log)},
        "encoder": encoder_figures(enc) if enc else None,
        "encoder_device_name": enc.get("device_name") if enc else None,
        "decoder": dec,
        "targets": TARGETS,
    }
    base = (summary["encoder"] or {}).get("base")
    if base:
        summary["targets_met"] = {
            "encoder_bag_speedup": base["speedup_bag"] is not None
            and base["speedup_bag"] >= TARGETS["encoder_bag_speedup"],
            "pararel_gpu_hours": base["projected_pararel_hours"] <= TARGETS["pararel_gpu_hours"],
        }
    (args.out / "gpu.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
