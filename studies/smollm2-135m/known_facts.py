"""Which PARAREL facts does SmolLM2-135M know? (step 1 of the study; resumable)

A fact is *known* when its gold answer's first token is the model's top-1 next token for at least
half of its usable prompts (the PARAREL templates with ``[X]`` before ``[Y]``, cut before ``[Y]``).
For each relation, a seeded sample of ``--per-relation`` facts (all of them with ``--per-relation
0``) is scored, ``--batch-size`` prompts per forward pass. Each scored fact is appended to
``OUT/known/<relation>.jsonl`` as soon as its relation's batch finishes, so a killed run resumes
where it stopped and never scores a fact twice. ``OUT/known_summary.json`` then gives, per
relation: facts in the file, usable templates, facts scored, facts known.

    python studies/smollm2-135m/known_facts.py --data ../shared/data --out studies/smollm2-135m

The data is read from ``--data`` and never copied: the output holds fact keys, the known share and
the answer's token count.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from kn_lens import load_model
from kn_lens.data.sources import load_facts
from kn_lens.readout import encode_facts, score_prompts, usable_bags


def write_summary(args: argparse.Namespace, summary: dict[str, dict]) -> None:
    """``OUT/known_summary.json`` for the relations scanned so far."""
    (args.out / "known_summary.json").write_text(
        json.dumps(
            {
                "model": args.model,
                "per_relation": args.per_relation,
                "seed": args.seed,
                "rule": "gold answer's first token is top-1 on at least half of the usable prompts",
                "relations": summary,
            },
            indent=1,
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--per-relation", type=int, default=200, help="0: every fact")
    ap.add_argument("--relations", default=None, help="comma list (default: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model = load_model(args.model, device="cpu")
    relations = args.relations.split(",") if args.relations else None
    bags = load_facts(args.data, relations=relations)
    check = usable_bags(model, bags)
    folder = args.out / "known"
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    rels = list(dict.fromkeys(b.relation for b in bags))
    for rel in rels:
        all_rel = [b for b in bags if b.relation == rel]
        kept = [b for b in check.kept if b.relation == rel]
        n_templates = max((len(b.prompts) for b in kept), default=0)
        rng = random.Random(f"{args.seed}:known:{rel}")
        pick = (
            kept if args.per_relation <= 0 else rng.sample(kept, min(args.per_relation, len(kept)))
        )
        pick.sort(key=lambda b: b.index)
        path = folder / f"{rel}.jsonl"
        done = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line after a kill: score again
                        continue
                    done[rec["key"]] = rec
        todo = [b for b in pick if b.key not in done]
        for s in range(0, len(todo), args.batch_size):
            chunk = todo[s : s + args.batch_size]
            prompts = [p for b in chunk for p in b.prompts]
            answers = [b.object for b in chunk for _ in b.prompts]
            enc = encode_facts(model, prompts, answers)
            scores = score_prompts(model, enc, batch_size=args.batch_size)
            correct = scores.correct
            lines, i = [], 0
            for b in chunk:
                n = len(b.prompts)
                share = float(correct[i : i + n].float().mean())
                n_tok = int(enc.answer_mask[i].sum())
                i += n
                rec = {"key": b.key, "n_prompts": n, "answer_tokens": n_tok, "share": share}
                done[b.key] = rec
                lines.append(json.dumps(rec) + "\n")
            with path.open("a") as f:
                f.writelines(lines)
        recs = [done[b.key] for b in pick if b.key in done]
        summary[rel] = {
            "facts": len(all_rel),
            "usable_facts": len(kept),
            "usable_templates": n_templates,
            "scored": len(recs),
            "known": sum(r["share"] >= 0.5 for r in recs),
            "known_multi_token": sum(r["share"] >= 0.5 and r["answer_tokens"] > 1 for r in recs),
        }
        print(rel, summary[rel], f"{time.time() - t0:.0f}s", flush=True)
        write_summary(args, summary)  # after each relation, so a partial scan can be used
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
