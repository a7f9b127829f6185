"""The README's table: the paper's numbers beside this study's and the default model's.

Every number is read from a ``results.json`` (through :func:`kn_lens.report.paper_rows`, the same
rows as each run's ``report.md``), none is typed in:

    kn-lens reproduce --out runs/default                    # the default model, 20 facts/relation
    python studies/smollm2-135m/table.py --default runs/default/results.json

prints the markdown table (``--study`` defaults to this folder's ``run/results.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kn_lens.report import paper_rows

HERE = Path(__file__).resolve().parent


class Run:
    """One results.json, with its paper-vs-run rows by (analysis, metric)."""

    def __init__(self, path: Path) -> None:
        self.doc = json.loads(path.read_text())
        self.rows = {(r["analysis"], r["metric"]): r for r in paper_rows(self.doc)}

    def find(self, analysis: str, start: str, end: str = "") -> dict[str, Any]:
        """The one row of ``analysis`` whose metric starts with ``start`` and ends with ``end``."""
        hits = [
            r
            for (a, m), r in self.rows.items()
            if a == analysis and m.startswith(start) and m.endswith(end)
        ]
        if len(hits) != 1:
            raise SystemExit(f"{analysis}: {len(hits)} rows match {start!r}...{end!r}")
        return hits[0]

    def ours(self, analysis: str, start: str, end: str = "") -> Any:
        return self.find(analysis, start, end)["ours"]

    def paper(self, analysis: str, start: str, end: str = "") -> Any:
        return self.find(analysis, start, end)["paper"]


def num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if abs(x) >= 1e5:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def pct(x: Any, digits: int = 1, sign: bool = True) -> str:
    """A percentage given as a percent (-17.9 -> "-17.9%")."""
    if x is None or isinstance(x, str):
        return num(x)
    if abs(x) < 0.1:  # small effects keep two digits ("-0.03%", not "-0.0%")
        digits = max(digits, 2)
    return f"{x:+.{digits}f}%" if sign else f"{x:.{digits}f}%"


def share(x: Any) -> str:
    """A share given as a fraction (0.121 -> "12.1%")."""
    return num(x) if x is None or isinstance(x, str) else f"{100 * x:.1f}%"


def pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def top_layers(run: Run, who: str) -> str:
    row = run.find("identify", "% of neurons in the top", f"({who})")
    span = row["metric"].split("in the ")[1].split(" (")[0]  # "top 10 of 30 layers"
    return f"{pct(row['ours'], 0, sign=False)} ({span})"


def median_update(run: Run, measure: str) -> float:
    facts = run.doc["results"]["update"]["facts"]
    return statistics.median(f["knowledge"][measure] for f in facts if "knowledge" in f)


def erase_cell(run: Run) -> str:
    er = run.doc["results"]["erase"]
    cells = []
    for rel in er["relations"] if "relations" in er else []:
        before = run.ours("erase", f"{rel}", "perplexity before")
        after = run.ours("erase", f"{rel}", "perplexity after")
        cells.append(f"{rel.split(' ')[0]} {num(before, 1)} → {num(after, 1)}")
    return "; ".join(cells)


def erase_others(run: Run) -> str:
    """Per erased relation, the mean change of the other relations' perplexity."""
    cells = []
    for (a, m), r in run.rows.items():
        if a == "erase" and "other relations" in m:
            cells.append(f"{m.split(' ')[0].rstrip(':')} {r['ours']}")
    return "; ".join(cells)


#: (measure, paper, study/default cell) rows of the README table.
ROWS: list[tuple[str, Callable[[Run], str], Callable[[Run], str]]] = [
    (
        "knowledge neurons per fact, ours / baseline",
        lambda r: num(r.paper("identify", "knowledge neurons per fact", "(ours)")),
        lambda r: pair(
            num(r.ours("identify", "knowledge neurons per fact", "(ours)")),
            num(r.ours("identify", "knowledge neurons per fact", "(baseline)")),
        ),
    ),
    (
        "shared neurons: same relation / other relations (ours)",
        lambda r: pair(
            num(r.paper("identify", "shared neurons, same relation", "(ours)")),
            num(r.paper("identify", "shared neurons, other relations", "(ours)")),
        ),
        lambda r: pair(
            num(r.ours("identify", "shared neurons, same relation", "(ours)")),
            num(r.ours("identify", "shared neurons, other relations", "(ours)")),
        ),
    ),
    (
        "knowledge neurons in the top layers, ours / baseline",
        lambda r: "most",
        lambda r: pair(top_layers(r, "ours"), top_layers(r, "baseline")),
    ),
    (
        "suppress: Δp / p, ours / baseline",
        lambda r: pair(
            pct(r.paper("modify", "suppress: % change of correct", "(ours)"), 2),
            pct(r.paper("modify", "suppress: % change of correct", "(baseline)"), 2),
        ),
        lambda r: pair(
            pct(r.ours("modify", "suppress: % change of correct", "(ours)")),
            pct(r.ours("modify", "suppress: % change of correct", "(baseline)")),
        ),
    ),
    (
        "amplify: Δp / p, ours / baseline",
        lambda r: pair(
            pct(r.paper("modify", "amplify: % change of correct", "(ours)"), 2),
            pct(r.paper("modify", "amplify: % change of correct", "(baseline)"), 2),
        ),
        lambda r: pair(
            pct(r.ours("modify", "amplify: % change of correct", "(ours)")),
            pct(r.ours("modify", "amplify: % change of correct", "(baseline)")),
        ),
    ),
    (
        "facts of other relations under suppress / amplify (ours)",
        lambda r: "small",
        lambda r: pair(
            pct(r.ours("modify", "suppress: % change on unrelated")),
            pct(r.ours("modify", "amplify: % change on unrelated")),
        ),
    ),
    (
        "*beyond the paper:* suppress, random neurons from the same layers (control)",
        lambda r: "–",
        lambda r: pct(r.ours("modify", "suppress: % change of correct", "(random control)"), 2),
    ),
    (
        "*beyond the paper:* suppress, other facts of the same relation (ours)",
        lambda r: "–",
        lambda r: pct(r.ours("modify", "suppress: % change on other facts of the same")),
    ),
    (
        "*beyond the paper:* own prompts whose top-1 flips under suppress, ours / random",
        lambda r: "–",
        lambda r: pair(
            share(r.ours("modify", "suppress: share of own prompts", "(ours)")),
            share(r.ours("modify", "suppress: share of own prompts", "(random)")),
        ),
    ),
    (
        "*beyond the paper:* found on half the prompts, suppressed on the held-out half: ours / "
        "random (flips)",
        lambda r: "–",
        lambda r: "{} / {} ({} / {})".format(
            pct(r.ours("heldout", "suppress, held-out prompts: % change", "(knowledge neurons)")),
            pct(r.ours("heldout", "suppress, held-out prompts: % change", "(random neurons)"), 2),
            share(r.ours("heldout", "suppress, held-out prompts: share", "(knowledge neurons)")),
            share(r.ours("heldout", "suppress, held-out prompts: share", "(random neurons)")),
        ),
    ),
    (
        "activation at the read position on T1 / T2 / T3 (ours)",
        lambda r: " / ".join(
            num(r.paper("distant", f"mean activation on {t}", "(ours)"), 3)
            for t in ("T1", "T2", "T3")
        ),
        lambda r: " / ".join(
            num(r.ours("distant", f"mean activation on {t}", "(ours)"), 3)
            for t in ("T1", "T2", "T3")
        ),
    ),
    (
        "activation on T1 / T2 / T3 (baseline)",
        lambda r: '"cannot tell apart"',
        lambda r: " / ".join(
            num(r.ours("distant", f"mean activation on {t}", "(baseline)"), 3)
            for t in ("T1", "T2", "T3")
        ),
    ),
    (
        "top-3 activating prompts that state the fact (T1), bottom 3",
        lambda r: "most / few",
        lambda r: pair(
            share(r.ours("trigger", "share of top prompts")),
            share(r.ours("trigger", "share of bottom prompts")),
        ),
    ),
    (
        "update: success / change rate, knowledge neurons",
        lambda r: pair(
            share(r.paper("update", "success rate (knowledge")),
            share(r.paper("update", "change rate (knowledge")),
        ),
        lambda r: pair(
            share(r.ours("update", "success rate (knowledge")),
            share(r.ours("update", "change rate (knowledge")),
        ),
    ),
    (
        "update: success / change rate, random neurons",
        lambda r: pair(
            share(r.paper("update", "success rate (random")),
            share(r.paper("update", "change rate (random")),
        ),
        lambda r: pair(
            share(r.ours("update", "success rate (random")),
            share(r.ours("update", "change rate (random")),
        ),
    ),
    (
        "update: Δ perplexity intra / inter relation, mean (knowledge neurons)",
        lambda r: pair(
            num(r.paper("update", "Δ intra-relation perplexity (knowledge"), 1),
            num(r.paper("update", "Δ inter-relation perplexity (knowledge"), 1),
        ),
        lambda r: pair(
            num(r.ours("update", "Δ intra-relation perplexity (knowledge")),
            num(r.ours("update", "Δ inter-relation perplexity (knowledge")),
        ),
    ),
    (
        "update: Δ perplexity intra / inter relation, median over facts",
        lambda r: "–",
        lambda r: pair(
            num(median_update(r, "delta_intra_ppl")), num(median_update(r, "delta_inter_ppl"))
        ),
    ),
    (
        "erase: the erased relation's perplexity before → after",
        lambda r: "P19 1450 → 2996 (and 3 more)",
        erase_cell,
    ),
    ("erase: other relations' perplexity", lambda r: "+1% to +10%", erase_others),
]


def table(study: Run, default: Run | None) -> str:
    head = "| measure | paper (bert-base-cased) | SmolLM2-135M study |"
    rule = "|---|---:|---:|"
    if default:
        head, rule = head + " default model |", rule + "---:|"
    lines = [head, rule]
    for name, paper, cell in ROWS:
        row = f"| {name} | {paper(study)} | {cell(study)} |"
        lines.append(row + (f" {cell(default)} |" if default else ""))
    return "\n".join(lines)


def per_relation(study: Run) -> str:
    """Per relation: facts, prompts per fact, the adaptive p, knowledge neurons per fact (ours),
    facts left without one, and whether p reached the paper's 2-5 neurons per fact."""
    rels: Mapping[str, Any] = study.doc["results"]["identify"]["relations"]
    bags = json.loads((HERE / "selection.json").read_text())["relations"]
    lines = [
        "| relation | facts | prompts per fact | p (ours) | rounds | neurons per fact (ours) "
        "| facts without neurons | 2–5 reached |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rel, r in sorted(rels.items(), key=lambda kv: -kv[1]["n_facts"]):
        o = r["ours"]
        sizes = sorted(set(bags[rel]["bag_sizes"])) if rel in bags else []
        lines.append(
            f"| {rel} | {o['n_facts']} | {'/'.join(map(str, sizes))} | {o['p']:.2f} "
            f"| {o['rounds']} "
            f"| {o['neurons_per_fact']:.2f} | {o['facts_without_neurons']} "
            f"| {'yes' if o['converged'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, default=HERE / "run" / "results.json")
    ap.add_argument("--default", type=Path, default=None, help="the default model's results.json")
    args = ap.parse_args(argv)
    study = Run(args.study)
    default = Run(args.default) if args.default else None
    print(table(study, default))
    print()
    print(per_relation(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
