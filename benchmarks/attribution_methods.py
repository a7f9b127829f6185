"""Benchmark: the attribution methods side by side, per fact, in one run.

    python benchmarks/attribution_methods.py                      # default model, 20 facts
    python benchmarks/attribution_methods.py --decoder            # GPT-2-small-shaped decoder
    python benchmarks/attribution_methods.py --max-bags 3 --json methods.json

For each fact it times ``kn_lens.attribute`` with ``method="ig"`` (the paper's, ``--steps``
Riemann steps for every layer), ``"grad_x_act"`` (attribution patching: one forward and one
backward pass for all layers) and ``"activation"`` (one forward pass), alternating the order from
fact to fact so that a change of the machine's load hits all alike; then it prints the seconds per
fact of each and the speed-up of each over IG, and the rank agreement (Spearman over all neurons)
and top-20 overlap of each method with IG: a cheap method is worth its speed only where it finds
what IG finds.

The encoder is the built-in default model on its own facts. ``--decoder`` uses a random
GPT-2-small-shaped ``HookedTransformer`` (12 layers, d_model 768, d_mlp 3072, vocabulary 50,257)
with ``--max-bags`` bags of ``--prompts`` random prompts of 12 tokens and a 2-token answer: the
shape, not the knowledge, sets the cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kn_lens  # noqa: E402
from kn_lens.attribution import attribute  # noqa: E402

METHODS = ("ig", "grad_x_act", "activation")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().double().argsort().argsort().double()
    rb = b.flatten().double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> float:
    ta = set(a.flatten().topk(k).indices.tolist())
    tb = set(b.flatten().topk(k).indices.tolist())
    return len(ta & tb) / k


def facts(args: argparse.Namespace) -> tuple[Any, list[tuple[list[Any], Any]]]:
    if not args.decoder:
        model = kn_lens.load_model("default", device="cpu")
        bags = kn_lens.data.default_facts()[: args.max_bags]
        return model, [(list(b.prompts), b.object) for b in bags]
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50_257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN", device="cpu", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(args.max_bags):
        prompts = [torch.randint(0, 50_257, (12,), generator=g).tolist() for _ in range(2)]
        out.append((prompts, torch.randint(0, 50_257, (2,), generator=g).tolist()))
    return model, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decoder", action="store_true", help="a GPT-2-small-shaped decoder")
    ap.add_argument("--max-bags", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, items = facts(args)
    attribute(model, items[0][0][:1], items[0][1], steps=2)  # warm-up
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    agree: dict[str, list[float]] = {m: [] for m in METHODS if m != "ig"}
    overlap: dict[str, list[float]] = {m: [] for m in METHODS if m != "ig"}
    for i, (prompts, answer) in enumerate(items):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        scores = {}
        for m in order:
            t0 = time.perf_counter()
            scores[m] = attribute(model, prompts, answer, method=m, steps=args.steps)
            seconds[m].append(time.perf_counter() - t0)
        for m in agree:
            agree[m].append(spearman(scores[m], scores["ig"]))
            overlap[m].append(top_overlap(scores[m], scores["ig"]))
    per_fact = {m: statistics.median(s) for m, s in seconds.items()}
    figures = {
        "model": "gpt2-small-shaped random decoder" if args.decoder else "default",
        "facts": len(items),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds_per_fact_median": per_fact,
        "seconds_all": seconds,
        "speedup_over_ig": {m: per_fact["ig"] / per_fact[m] for m in METHODS},
        "spearman_with_ig_median": {m: statistics.median(v) for m, v in agree.items()},
        "top20_overlap_with_ig_median": {m: statistics.median(v) for m, v in overlap.items()},
    }
    print(
        f"attribution methods, {figures['model']}, {len(items)} facts, m={args.steps}, "
        f"{figures['threads']} threads (median seconds per fact)"
    )
    for m in METHODS:
        line = f"  {m:<11} {per_fact[m]:8.3f} s   {figures['speedup_over_ig'][m]:7.1f}x IG"
        if m in agree:
            line += (
                f"   Spearman with IG {figures['spearman_with_ig_median'][m]:.3f}, "
                f"top-20 overlap {figures['top20_overlap_with_ig_median'][m]:.2f}"
            )
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
