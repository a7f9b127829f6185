"""Choose the study's facts from the known-facts scan (step 2 of the study).

Reads ``known_summary.json`` and ``known/<relation>.jsonl`` (written by ``known_facts.py``) and
draws, with a generator seeded by ``--seed``, up to ``--per-relation`` known facts from each
relation that has at least ``--min-known`` of them. Relations with at least ``--min-templates``
usable templates come first (sharing across paraphrases needs several prompts); relations with
fewer are added, best-known first, only while the sample has fewer than ``--min-facts`` facts or
``--min-relations`` relations. Writes ``facts.txt`` (one fact key per line, for ``kn-lens
--facts``) and ``selection.json`` (per relation: known, chosen, usable templates, bag sizes after
``--max-prompts``, multi-token answers).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=here)
    ap.add_argument("--per-relation", type=int, default=20)
    ap.add_argument("--min-known", type=int, default=5)
    ap.add_argument("--min-templates", type=int, default=4)
    ap.add_argument("--min-facts", type=int, default=100)
    ap.add_argument("--min-relations", type=int, default=8)
    ap.add_argument("--max-prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    summary = json.loads((args.dir / "known_summary.json").read_text())["relations"]
    known: dict[str, list[dict]] = {}
    for rel in summary:
        recs = [
            json.loads(line)
            for line in (args.dir / "known" / f"{rel}.jsonl").read_text().splitlines()
            if line.strip()
        ]
        known[rel] = sorted(
            (r for r in recs if r["share"] >= 0.5), key=lambda r: int(r["key"].split("/")[1])
        )
    eligible = [r for r in summary if len(known[r]) >= args.min_known]
    many = [r for r in eligible if summary[r]["usable_templates"] >= args.min_templates]
    few = [r for r in eligible if summary[r]["usable_templates"] < args.min_templates]
    order = sorted(many, key=lambda r: -len(known[r])) + sorted(few, key=lambda r: -len(known[r]))
    chosen: dict[str, list[dict]] = {}
    for rel in order:
        n_facts = sum(len(v) for v in chosen.values())
        if rel in few and n_facts >= args.min_facts and len(chosen) >= args.min_relations:
            break
        rng = random.Random(f"{args.seed}:select:{rel}")
        pick = rng.sample(known[rel], min(args.per_relation, len(known[rel])))
        chosen[rel] = sorted(pick, key=lambda r: int(r["key"].split("/")[1]))
    keys = [r["key"] for v in chosen.values() for r in v]
    lines = [
        "# SmolLM2-135M study: known PARAREL facts (select_facts.py; one key per line)",
        *keys,
    ]
    (args.dir / "facts.txt").write_text("\n".join(lines) + "\n")
    table = {
        rel: {
            "usable_templates": summary[rel]["usable_templates"],
            "scored": summary[rel]["scored"],
            "known": len(known[rel]),
            "chosen": len(v),
            "bag_sizes": sorted(min(r["n_prompts"], args.max_prompts) for r in v),
            "multi_token_answers": sum(r["answer_tokens"] > 1 for r in v),
        }
        for rel, v in chosen.items()
    }
    out = {
        "seed": args.seed,
        "per_relation": args.per_relation,
        "max_prompts": args.max_prompts,
        "n_facts": len(keys),
        "n_relations": len(chosen),
        "multi_token_answers": sum(t["multi_token_answers"] for t in table.values()),
        "relations": table,
    }
    (args.dir / "selection.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "relations"}))
    for rel, t in table.items():
        print(rel, t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
