"""The README's table: the paper's numbers beside this study's and the default model's.

Every number is read from a ``results.json`` (through :func:`kn_lens.report.paper_rows`, the same
rows as each run's ``report.md``), none is typed in:

    kn-lens reproduce --out runs/default                    # the default model, 20 facts/relation
    python studies/smollm2-135m/table.py --default runs/default/results.json

prints the markdown table (``--study`` defaults to this folder's ``run/results.json``), the
per-relation table and, once the study has them, the methods x measures table of ``localize``
and the rules x metrics table of ``update`` (issue 22; the headline table then gains one row per
localisation method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kn_lens.experiments.localize import METHODS
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
    """A share the report gives in percent (12.1 -> "12.1%")."""
    return num(x) if x is None or isinstance(x, str) else f"{x:.1f}%"


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


#: A row of ``paper_rows``: (analysis, the metric's start, its end).
Key = tuple[str, ...]
Cell = Callable[[Run], str]


def joined(field: str, keys: list[Key], fmt: Callable[[Any], str]) -> Cell:
    """A cell: the rows' ``field`` (``"paper"`` or ``"ours"``), each formatted, joined by " / "."""
    return lambda r: " / ".join(fmt(r.find(*k)[field]) for k in keys)


def both(
    keys: list[Key], fmt: Callable[[Any], str], paper_fmt: Callable[[Any], str] | None = None
) -> tuple[Cell, Cell]:
    """The paper cell and the run cell of the same rows."""
    return joined("paper", keys, paper_fmt or fmt), joined("ours", keys, fmt)


def text(s: str) -> Cell:
    return lambda r: s


def pct2(x: Any) -> str:
    return pct(x, 2)


def num0(x: Any) -> str:
    return num(x, 0)


def num1(x: Any) -> str:
    return num(x, 1)


def num3(x: Any) -> str:
    return num(x, 3)


def ours_and_baseline(analysis: str, start: str) -> list[Key]:
    return [(analysis, start, "(ours)"), (analysis, start, "(baseline)")]


T123 = ("T1", "T2", "T3")

#: (measure, paper cell, study/default cell) rows of the README table.
ROWS: list[tuple[str, Cell, Cell]] = [
    (
        "knowledge neurons per fact, ours / baseline",
        joined("paper", [("identify", "knowledge neurons per fact", "(ours)")], num),
        joined("ours", ours_and_baseline("identify", "knowledge neurons per fact"), num),
    ),
    (
        "shared neurons: same relation / other relations (ours)",
        *both(
            [
                ("identify", "shared neurons, same relation", "(ours)"),
                ("identify", "shared neurons, other relations", "(ours)"),
            ],
            num,
        ),
    ),
    (
        "knowledge neurons in the top layers, ours / baseline",
        text("most"),
        lambda r: pair(top_layers(r, "ours"), top_layers(r, "baseline")),
    ),
    (
        "suppress: Δp / p, ours / baseline",
        *both(ours_and_baseline("modify", "suppress: % change of correct"), pct, pct2),
    ),
    (
        "amplify: Δp / p, ours / baseline",
        *both(ours_and_baseline("modify", "amplify: % change of correct"), pct, pct2),
    ),
    (
        "facts of other relations under suppress / amplify (ours)",
        text("small"),
        joined(
            "ours",
            [
                ("modify", "suppress: % change on unrelated"),
                ("modify", "amplify: % change on unrelated"),
            ],
            pct,
        ),
    ),
    (
        "*beyond the paper:* suppress, random neurons from the same layers (control)",
        text("–"),
        joined("ours", [("modify", "suppress: % change of correct", "(random control)")], pct2),
    ),
    (
        "*beyond the paper:* suppress, other facts of the same relation (ours)",
        text("–"),
        joined("ours", [("modify", "suppress: % change on other facts of the same")], pct),
    ),
    (
        "*beyond the paper:* own prompts whose top-1 flips under suppress, ours / random",
        text("–"),
        joined(
            "ours",
            [
                ("modify", "suppress: % of own prompts", "(ours)"),
                ("modify", "suppress: % of own prompts", "(random)"),
            ],
            share,
        ),
    ),
    (
        "*beyond the paper:* found on half the prompts, suppressed on the held-out half: ours / "
        "random (flips)",
        text("–"),
        lambda r: "{} / {} ({} / {})".format(
            pct(r.ours("heldout", "suppress, held-out prompts: % change", "(knowledge neurons)")),
            pct(r.ours("heldout", "suppress, held-out prompts: % change", "(random neurons)"), 2),
            share(r.ours("heldout", "suppress, held-out prompts: % of", "(knowledge neurons)")),
            share(r.ours("heldout", "suppress, held-out prompts: % of", "(random neurons)")),
        ),
    ),
    (
        "activation at the read position on T1 / T2 / T3 (ours)",
        *both([("distant", f"mean activation on {t}", "(ours)") for t in T123], num3),
    ),
    (
        "activation on T1 / T2 / T3 (baseline)",
        text('"cannot tell apart"'),
        joined("ours", [("distant", f"mean activation on {t}", "(baseline)") for t in T123], num3),
    ),
    (
        "top-3 activating prompts that state the fact (T1), bottom 3",
        text("most / few"),
        joined(
            "ours",
            [("trigger", "% of top prompts"), ("trigger", "% of bottom prompts")],
            share,
        ),
    ),
    (
        "update: success / change rate, knowledge neurons",
        *both(
            [("update", "success rate, % (knowledge"), ("update", "change rate, % (knowledge")],
            share,
        ),
    ),
    (
        "update: success / change rate, random neurons",
        *both([("update", "success rate, % (random"), ("update", "change rate, % (random")], share),
    ),
    (
        "update: Δ perplexity intra / inter relation, mean (knowledge neurons)",
        *both(
            [
                ("update", "Δ intra-relation perplexity (knowledge"),
                ("update", "Δ inter-relation perplexity (knowledge"),
            ],
            num,
            num1,
        ),
    ),
    (
        "update: Δ perplexity intra / inter relation, median over facts",
        text("–"),
        lambda r: pair(
            num(median_update(r, "delta_intra_ppl")), num(median_update(r, "delta_inter_ppl"))
        ),
    ),
    (
        "erase: the erased relation's perplexity before → after",
        text("P19 1450 → 2996 (and 3 more)"),
        erase_cell,
    ),
    ("erase: other relations' perplexity", text("+1% to +10%"), erase_others),
]


def localize_cell(method: str) -> Cell:
    """Suppressing the method's neurons: own / same relation / other relations (Δp / p)."""

    def cell(r: Run) -> str:
        m = r.doc["results"].get("localize", {}).get("methods", {}).get(method)
        if m is None:
            return "–"
        keys = ("suppress_own", "suppress_same_relation", "suppress_other_relations")
        return " / ".join(pct(m[k]) for k in keys)

    return cell


#: Rows shown once the study has run ``localize``: one per method.
LOCALIZE_ROWS: list[tuple[str, Cell, Cell]] = [
    (
        f"*beyond the paper:* localize, `{m}` neurons suppressed: own / same relation / other "
        "relations",
        text("–"),
        localize_cell(m),
    )
    for m in METHODS
]


def table(study: Run, default: Run | None) -> str:
    head = "| measure | paper (bert-base-cased) | SmolLM2-135M study |"
    rule = "|---|---:|---:|"
    if default:
        head, rule = head + " default model |", rule + "---:|"
    lines = [head, rule]
    rows = ROWS + (LOCALIZE_ROWS if "localize" in study.doc["results"] else [])
    for name, paper, cell in rows:
        row = f"| {name} | {paper(study)} | {cell(study)} |"
        lines.append(row + (f" {cell(default)} |" if default else ""))
    return "\n".join(lines)


#: (column, field of a method's summary, format) of the methods x measures table.
LOCALIZE_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("own", "suppress_own", pct),
    ("same relation", "suppress_same_relation", pct),
    ("other relations", "suppress_other_relations", pct),
    ("own top-1 flipped", "flips_own", lambda x: share(None if x is None else 100 * x)),
    ("held-out half", "heldout_suppress", pct),
    ("specificity (points)", "specificity", num1),
    ("Jaccard with ig", "overlap_with_ig", num),
    ("Spearman with ig", "spearman_with_ig", num),
    ("s / fact", "seconds_per_fact", num),
]


def summary_table(
    first: str, count: str, rows: Mapping[str, Any], columns: list[tuple[str, str, Callable]]
) -> str:
    """One row per entry of ``rows`` (a method's or rule's summary): its name, its ``n_facts``
    under the heading ``count``, then each ``(heading, field, format)`` of ``columns``."""
    lines = [
        f"| {first} | {count} | " + " | ".join(c for c, _, _ in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name, r in rows.items():
        cells = " | ".join(fmt(r.get(field)) for _, field, fmt in columns)
        lines.append(f"| `{name}` | {int(r['n_facts'])} | {cells} |")
    return "\n".join(lines)


def localize_table(run: Run) -> str:
    """Methods x measures of ``localize`` (means over facts; Δp / p in %)."""
    methods = run.doc["results"]["localize"]["methods"]
    return summary_table("method", "facts", methods, LOCALIZE_COLUMNS)


def strict_localize_table(run: Run) -> str:
    """Own / same-relation / other-relations suppression and specificity per method, over the
    facts whose ig neurons the paper's refinement gave (not ``ig_relaxed``): the check that the
    facts with a lowered sharing threshold do not decide the comparison."""
    loc = run.doc["results"]["localize"]
    facts = [f for f in loc["facts"] if not f.get("ig_relaxed")]
    cols = LOCALIZE_COLUMNS[:3] + [c for c in LOCALIZE_COLUMNS if c[1] == "specificity"]
    rows = {}
    for m in loc["methods"]:
        vals = {
            field: [v for f in facts if (v := f["measures"][m].get(field)) is not None]
            for _, field, _ in cols
        }
        rows[m] = {"n_facts": len(facts)} | {
            k: (statistics.fmean(v) if v else None) for k, v in vals.items()
        }
    return summary_table("method (paper's refinement only)", "facts", rows, cols)


#: (column, metric, format) of the rules x metrics table of ``update``.
RULE_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("efficacy", "efficacy", share),
    ("generalization", "generalization", share),
    ("locality, same relation", "locality_same_relation", share),
    ("locality, other relations", "locality_other_relations", share),
    ("Δ ppl intra", "delta_intra_ppl", num),
    ("Δ ppl inter", "delta_inter_ppl", num),
    ("facts with an inverse", "n_symmetry_facts", num0),
    ("symmetry before", "symmetry_before", share),
    ("symmetry", "symmetry", share),
    ("Δ log p(s), inverse", "symmetry_logp_gain", num),
]


def rules_table(run: Run) -> str:
    """Edit rules x metrics of ``update`` (means over the edited facts)."""
    rules = run.doc["results"]["update"]["rules"]
    return summary_table("rule", "edited facts", rules, RULE_COLUMNS)


#: Published knowledge-neuron edits, as cited (other models, data and metrics: directions only):
#: (source, model and data, reliability, generalization, locality).
PUBLISHED: list[tuple[str, str, str, str, str]] = [
    ("EasyEdit README, KN", "LLaMA-2-7B, ZsRE", "28.95", "28.43", "65.43"),
    (
        "Yao et al. 2023, KN (as EasyEdit's README quotes it)",
        "GPT-J, ZsRE",
        "11.34",
        "9.40",
        "90.03",
    ),
    (
        "Yao et al. 2023, KN (as EasyEdit's README quotes it)",
        "GPT-J, CounterFact",
        "1.66",
        "1.38",
        "58.28",
    ),
]


def published_table(run: Run) -> str:
    """This study's edit rules beside the published knowledge-neuron edits (reliability =
    efficacy; locality: ours on the same relation / on other relations)."""
    rules = run.doc["results"]["update"]["rules"]
    n = int(rules["paper"]["n_facts"])
    lines = [
        "| edit | model, data | reliability | generalization | locality |",
        "|---|---|---:|---:|---:|",
    ]
    for name in ("paper", "eleuther"):
        r = rules[name]
        loc = pair(
            num(r.get("locality_same_relation"), 1), num(r.get("locality_other_relations"), 1)
        )
        lines.append(
            f"| this study, `{name}` rule | SmolLM2-135M, {n} PARAREL facts "
            f"| {num(r.get('efficacy'), 1)} | {num(r.get('generalization'), 1)} | {loc} |"
        )
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in PUBLISHED]
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
    results = study.doc["results"]
    if "localize" in results:  # beyond the paper (issue 22), once the study has run them
        print()
        print(localize_table(study))
        if study.doc["results"]["localize"].get("relaxed_facts"):
            print()
            print(strict_localize_table(study))
    if "rules" in results.get("update", {}):
        print()
        print(rules_table(study))
        print()
        print(published_table(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
