"""The report's side of ``update`` (:mod:`kn_lens.experiments.update`): its rows of the
paper-vs-run table, in % for every share, each missing number with why, and its example lines.
Plain dicts in, display values out (the result as results.json holds it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from kn_lens.results import ReportRow, dig, fmt, percent, report_row, spread_by_relation


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """The paper's update figures beside this run's (the report's table)."""
    rows = []
    for arm, prefix in (("knowledge", ""), ("random", "random_")):
        who = "knowledge neurons" if arm == "knowledge" else "random neurons"
        for m, label in (
            ("success_rate", "success rate"),
            ("change_rate", "change rate"),
            ("delta_intra_ppl", "Δ intra-relation perplexity"),
            ("delta_inter_ppl", "Δ inter-relation perplexity"),
        ):
            pv, ov = dig(paper, prefix + m), dig(result, "summary", arm, m)
            if m.endswith("_rate"):  # shares, in % as every share of the report
                label, pv, ov = f"{label}, %", percent(pv), percent(ov)
            if ov is None:
                ov = why_missing(result, arm, m)
            rows.append(report_row(f"{label} ({who})", pv, ov))
    n = dig(result, "summary", "knowledge", "n_facts")
    rows.append(report_row("facts edited", None, n if n else why_missing(result, "knowledge", "")))
    return rows


def why_missing(result: Mapping[str, Any], arm: str, metric: str) -> str:
    """Why an update row has no number: no fact was edited (with the reasons the facts were
    left out), no prompt was answered correctly before the edit (the change rate), or no
    control was run."""
    edited = dig(result, "summary", arm, "n_facts")
    if not edited:
        reasons = Counter(
            str(s.get("reason", "?")).split(" (")[0]
            for s in result.get("skipped", [])
            if isinstance(s, dict)
        )
        said = "; ".join(f"{n} {why}" for why, n in reasons.most_common(3))
        return "- (no fact edited" + (f": {said}" if said else "") + ")"
    if metric == "change_rate":
        return "- (no prompt answered correctly before the edit)"
    return "- (not measured)"


def report_examples(res: Mapping[str, Any], n: int) -> list[str]:
    """A few facts of the result as display lines for the report, one per relation first."""
    out = []
    facts = [f for f in res.get("facts", []) if isinstance(f, dict)]
    for f in spread_by_relation(facts, n):
        k = f.get("knowledge") or {}
        line = (
            f"{f.get('subject')} ({f.get('relation')}): {f.get('old_answer')} -> "
            f"{f.get('new_answer')} by editing {len(f.get('neurons', []))} neuron(s): "
            f"success {fmt(percent(k.get('success_rate')))}%, change "
            f"{fmt(percent(k.get('change_rate')))}%, Δ intra-ppl {fmt(k.get('delta_intra_ppl'))}"
        )
        r = f.get("random")
        if isinstance(r, dict):
            line += f"; random neurons: success {fmt(percent(r.get('success_rate')))}%"
        out.append(line)
    return out


__all__ = ["report_examples", "report_rows", "why_missing"]
