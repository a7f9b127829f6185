"""Can update's symmetry measure be above 0 on SmolLM2? Ask the *true* inverse of each edited fact
that has one ("The capital of Turkey is" -> Ankara for P1376's Ankara -> Turkey), through the same
inverse prompts as update's symmetry (kn_lens.experiments.edit_rules.inverse_prompts, the inverse
relation's PARAREL templates), with no edit. Prints the share of prompts whose top-1 token is the
answer's first token, per fact and overall.

    python studies/smollm2-135m/check_symmetry.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kn_lens import load_model
from kn_lens.data.facts import select_keys
from kn_lens.data.sources import load_facts, load_templates
from kn_lens.experiments.edit_rules import inverse_prompts, inverse_relations
from kn_lens.readout import encode_facts, score_prompts, usable_bags

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parents[1].parent / "shared" / "data"))
    args = ap.parse_args()
    update = json.loads((HERE / "run" / "results.json").read_text())["results"]["update"]
    edited = [f for f in update["facts"] if f["rule_info"].get("symmetry_source")]
    model = load_model("smollm2-135m")
    bags = usable_bags(model, load_facts(args.data)).kept
    bags = select_keys(bags, [f["key"] for f in edited], "update's facts")
    templates = load_templates(args.data, None, None, inverse_relations(b.relation for b in bags))
    total = hits = 0
    for bag in bags:
        prompts, _, _ = inverse_prompts(model, bag, bag.object, {}, templates)
        enc = encode_facts(model, prompts, [bag.subject] * len(prompts))
        scores = score_prompts(model, enc)
        correct = scores.correct
        total, hits = total + len(prompts), hits + int(correct.sum())
        said = model.tokenizer.decode([int(scores.top1[0])])
        print(
            f"{bag.key}: {prompts[0]!r} -> {bag.subject!r}: {float(correct.float().mean()):.0%} "
            f"of {len(prompts)} prompts (top-1 on the first: {said!r})"
        )
    print(
        f"true inverses answered: {hits} of {total} prompts ({hits / total:.1%}), {len(bags)} facts"
    )


if __name__ == "__main__":
    main()
