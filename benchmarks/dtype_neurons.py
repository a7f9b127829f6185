"""Lower precision against float32 on the default model: speed, scores and knowledge neurons.

For the default model's facts (all of them, or ``--max-bags`` per relation, the same seeded sample
as ``kn-lens ... --max-bags``), each fact's bag is attributed with
``kn_lens.attribute(..., dtype=d)`` for float32 and each ``--dtypes`` entry, one after the
other (the order rotates from fact to fact, so that load on a shared machine falls on every
precision alike). Per fact and precision it records:

- the wall time of the attribution;
- the Pearson correlation of all ``[prompt, layer, d_mlp]`` scores with float32's;
- the refined knowledge neurons (coarse at ``t``, shared by ``p`` of the prompts: the paper's
  fixed-p rule, :func:`kn_lens.knowledge_neurons.refine`), and whether they equal float32's.

One JSON line per fact goes to ``--out`` as soon as the fact is done; a rerun with the same
``--out`` skips the facts already there. The summary (printed, and ``--json``) gives, per
precision, the speed against float32 (total time over total time), the worst and median
correlation, and the share of facts whose refined neurons are identical to float32's.

    python benchmarks/dtype_neurons.py --threads 1 \
        --out dtype.jsonl --json dtype-summary.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kn_lens import attribute, load_model
from kn_lens.config import PaperConfig
from kn_lens.data import default_facts, sample_bags
from kn_lens.knowledge_neurons import coarse_neurons, coarse_threshold, refine

DTYPES = ("bfloat16", "float16")


def select_facts(max_bags: int | None, relations: list[str] | None, seed: int) -> list[Any]:
    """The default model's facts of ``relations`` (default all), at most ``max_bags`` per relation
    (:func:`kn_lens.data.sample_bags`, as the CLI's ``--max-bags`` samples them)."""
    bags = default_facts()
    if relations:
        unknown = sorted(set(relations) - {b.relation for b in bags})
        if unknown:
            raise SystemExit(f"--relations: {unknown} not in the default model's world")
        bags = [b for b in bags if b.relation in relations]
    return sample_bags(bags, max_bags, seed)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    pair = torch.stack([a.flatten().double(), b.flatten().double()])
    return float(torch.corrcoef(pair)[0, 1])


def measure_fact(model: Any, bag: Any, dtypes: list[str], turn: int, cfg: PaperConfig) -> dict:
    """Attribute one bag in every precision; return its times, correlations and neurons."""
    order = ["float32", *dtypes]
    order = order[turn % len(order) :] + order[: turn % len(order)]
    scores, seconds = {}, {}
    for d in order:
        t0 = time.perf_counter()
        scores[d] = attribute(model, list(bag.prompts), bag.object, steps=cfg.steps, dtype=d)
        seconds[d] = time.perf_counter() - t0
    t = coarse_threshold(cfg, "ig")
    neurons = {
        d: sorted(refine(coarse_neurons(s, t), cfg.p, min_shared=cfg.min_shared_prompts))
        for d, s in scores.items()
    }
    ref = set(neurons["float32"])
    return {
        "key": bag.key,
        "relation": bag.relation,
        "prompts": len(bag.prompts),
        "seconds": seconds,
        "pearson": {d: pearson(scores["float32"], scores[d]) for d in dtypes},
        "neurons": {d: [list(n) for n in ns] for d, ns in neurons.items()},
        "identical": {d: set(neurons[d]) == ref for d in dtypes},
    }


def summarise(rows: list[dict], dtypes: list[str]) -> dict:
    total32 = sum(r["seconds"]["float32"] for r in rows)
    out: dict[str, Any] = {"facts": len(rows), "float32_seconds": round(total32, 2), "dtypes": {}}
    for d in dtypes:
        rs = [r["pearson"][d] for r in rows]
        same = sum(r["identical"][d] for r in rows)
        out["dtypes"][d] = {
            "speed_vs_float32": round(total32 / sum(r["seconds"][d] for r in rows), 3),
            "pearson_worst": min(rs),
            "pearson_median": statistics.median(rs),
            "identical_neurons": same,
            "identical_share": round(same / len(rows), 4),
            "differing_facts": [r["key"] for r in rows if not r["identical"][d]],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--max-bags", type=int, default=None, help="facts per relation (default: every fact)"
    )
    ap.add_argument("--relations", default=None, help="comma list (default: every relation)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma list of bfloat16, float16")
    ap.add_argument("--steps", type=int, default=None, help="Riemann steps (default the paper's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one per fact (resumable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        ap.error(f"--dtypes: {bad or dtypes!r} must be among {', '.join(DTYPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PaperConfig() if args.steps is None else PaperConfig(steps=args.steps)
    relations = args.relations.split(",") if args.relations else None
    bags = select_facts(args.max_bags, relations, args.seed)

    done: dict[str, dict] = {}
    if args.out.exists():
        for n, line in enumerate(args.out.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: measured again
                print(f"{args.out}:{n}: incomplete line, that fact is measured again")
                continue
            if set(rec["identical"]) != set(dtypes):
                raise SystemExit(
                    f"{args.out}:{n}: measured for {sorted(rec['identical'])}, not {dtypes}"
                )
            done[rec["key"]] = rec
    todo = [b for b in bags if b.key not in done]
    print(f"{len(bags)} facts, {len(done)} already in {args.out}, {len(todo)} to measure")

    from tqdm.auto import tqdm

    model = load_model("default")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for i, bag in enumerate(tqdm(todo, desc="facts", unit="fact")):
            rec = measure_fact(model, bag, dtypes, len(done) + i, cfg)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[bag.key] = rec
    rows = [done[b.key] for b in bags]
    summary = summarise(rows, dtypes)
    summary.update(
        steps=cfg.steps,
        t=cfg.t,
        p=cfg.p,
        max_bags=args.max_bags,
        seed=args.seed,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
    )
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
