"""The report of a run, rendered from ``DIR/results.json`` alone (see :mod:`kn_lens.rundir`).

:func:`write_report` writes ``report.md`` (the paper's headline numbers beside this run's, model and
data, examples), ``report.html`` (the same with every figure embedded, plotly.js included once) and
``figures/*.html``. Every analysis' title, paper numbers, figures and table rows come from its
entry in the registry (:data:`kn_lens.experiments.ANALYSES`); nothing here is per analysis but the
examples.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kn_lens.config import PaperConfig
from kn_lens.coverage import coverage_text, section_state
from kn_lens.experiments import ANALYSES
from kn_lens.plots import save_figure
from kn_lens.results import dig, fmt, is_number
from kn_lens.rundir import check_results, load_results

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Paper vs this run
# ----------------------------------------------------------------------------------------------


def current_results(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of ``doc["results"]`` computed on the latest command's facts (and those
    without a fact record, from an older kn_lens); stale sections
    (:func:`kn_lens.coverage.section_state`) are left out."""
    results = doc.get("results", {})
    return {
        name: res
        for name, res in results.items()
        if isinstance(res, dict) and section_state(doc, name) != "stale"
    }


def stale_sections(doc: Mapping[str, Any]) -> list[str]:
    """The analyses whose results.json section was computed on another selection of facts."""
    return [n for n in doc.get("results", {}) if section_state(doc, n) == "stale"]


def paper_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's headline numbers beside this run's: ``{"analysis", "metric", "paper", "ours",
    "note"}`` rows for every analysis in ``doc["results"]``, by its registry entry's ``rows``."""
    rows: list[dict[str, Any]] = []
    results, meta, papers = current_results(doc), doc.get("meta", {}), doc.get("paper", {})
    for name, analysis in ANALYSES.items():
        res = results.get(name)
        if not isinstance(res, dict):
            continue
        paper = papers.get(name) if isinstance(papers.get(name), dict) else analysis.paper
        try:
            made = analysis.rows(res, paper, meta)
        except Exception as e:  # noqa: BLE001 - a report must still be written
            log.warning("comparing %s with the paper failed: %s", name, e)
            continue
        rows += [{"analysis": name, **r} for r in made]
    return rows


# ----------------------------------------------------------------------------------------------
# Figures and examples
# ----------------------------------------------------------------------------------------------


def figures(doc: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(analysis, file stem, plotly figure)`` for each figure of each analysis in ``doc``; the
    stem is the analysis name (``_2``, ``_3`` ... for further figures of one analysis)."""
    out = []
    results, papers = current_results(doc), doc.get("paper", {})
    for name, analysis in ANALYSES.items():
        res = results.get(name)
        if not isinstance(res, dict):
            continue
        paper = papers.get(name) if isinstance(papers.get(name), dict) else analysis.paper
        for i, fn in enumerate(analysis.figures):
            try:
                fig = fn(res, paper)
            except Exception as e:  # noqa: BLE001 - one broken figure must not stop the report
                log.warning("figure %d of %s failed: %s", i + 1, name, e)
                continue
            if fig is not None:
                out.append((name, name if i == 0 else f"{name}_{i + 1}", fig))
    return out


def examples(doc: Mapping[str, Any], n: int = 3) -> dict[str, list[str]]:
    """Each analysis' example lines (its registry entry's ``examples``: a few activating prompts
    of trigger, a few edits of update), one fact per relation first."""
    out: dict[str, list[str]] = {}
    res = current_results(doc)
    for name, analysis in ANALYSES.items():
        fn = analysis.examples
        if fn is not None and isinstance(res.get(name), dict):
            try:
                lines = fn(res[name], n)
            except Exception as e:  # noqa: BLE001 - examples are decoration; never fail
                log.warning("no %s examples: %s", name, e)
                lines = []
            if lines:
                out[name] = lines
    return out


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _meta_lines(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = doc.get("meta", {})
    model, data = meta.get("model", {}), meta.get("data", {})
    m = model.get("name", "?")
    if "n_layers" in model:
        m += (
            f" ({model['n_layers']} layers, d_mlp {model.get('d_mlp')}, "
            f"{fmt(model.get('n_params'))} parameters)"
        )
    d = str(data.get("data", "?"))
    for k in ("lama", "patterns", "web"):
        if data.get(k):
            d += f"; {k} {data[k]}"
    if "n_facts" in data:
        d += f" -- {fmt(data['n_facts'])} facts, {data.get('n_relations', '?')} relation(s)"
    if data.get("max_bags"):
        d += f", at most {data['max_bags']} per relation"
    rows = [("Model", m), ("Data", d)]
    if data.get("relations"):
        rows.append(("Relations", ", ".join(data["relations"])))
    cfg = meta.get("config", {})
    base = PaperConfig().to_dict()
    changed = {k: v for k, v in cfg.items() if k in base and _norm(base[k]) != _norm(v)}
    rows.append(
        (
            "Config",
            "the paper's defaults"
            + (
                "; changed: " + ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else ""
            ),
        )
    )
    for key, label in (("timings", "Wall time"), ("cpu_seconds", "CPU time (this process)")):
        t = meta.get(key, {})
        if isinstance(t, dict) and t:
            rows.append((label, timings_text(t)))
    v = meta.get("versions", {})
    if v:
        rows.append(("Versions", ", ".join(f"{k} {x}" for k, x in v.items())))
    labels = {
        "created": "Created (the first run into this folder started)",
        "started": "Started (the latest command)",
        "updated": "Updated",
    }
    for k in ("command", "device", "created", "started", "updated"):
        if meta.get(k):
            rows.append((labels.get(k, k.capitalize()), str(meta[k])))
    return rows


def facts_lines(doc: Mapping[str, Any]) -> list[str]:
    """The report's lines on the facts: how many the latest command selected, how many of them
    the model knows (the rule, once for every analysis) and which it does not, with why, and a
    few prompts exactly as the model is fed them (a decoder's cut before the answer)."""
    meta = doc.get("meta", {})
    data, known = meta.get("data", {}), meta.get("known")
    lines = [f"Selected: {fmt(data.get('n_facts', '?'))} fact(s)."]
    if not isinstance(known, dict) or known.get("selection") != data.get("selection"):
        lines.append(
            "Known to the model: not measured for this selection (no analysis that needs the "
            "model has run on it)."
        )
    else:
        unknown = known.get("unknown") or {}
        lines.append(
            f"Known to the model: {known.get('n_known')} of {known.get('n_facts')} "
            f"({known.get('rule')}). Every analysis but identify measures the known facts only."
        )
        if unknown:
            lines.append(f"Not known, left out of the analyses ({len(unknown)}):")
            lines += [f"- {k}: {why}" for k, why in list(unknown.items())[:20]]
            if len(unknown) > 20:
                lines.append(f"- ... and {len(unknown) - 20} more (results.json meta.known)")
    fed = data.get("prompts_as_fed")
    if isinstance(fed, dict) and fed:
        lines.append("Prompts as the model is fed them (the answer is what it should predict):")
        for key, ex in fed.items():
            if not isinstance(ex, dict):
                continue
            prompts = " | ".join(f'"{p}"' for p in ex.get("prompts", []))
            more = ex.get("n_prompts", 0) - len(ex.get("prompts", []))
            lines.append(
                f"- {key} ({ex.get('subject')} -> {ex.get('object')}): {prompts}"
                + (f" (and {more} more)" if more > 0 else "")
            )
    return lines


def timings_text(timings: Mapping[str, Any]) -> str:
    """``"attribute 12.0s, identify 1.0s, ..."``. Sharded attribution (``--shard K/N`` runs record
    ``"attribute shard K/N"``) is given once, as the sum of the shards' times, and said to be
    sharded."""
    shards = {k: v for k, v in timings.items() if k.startswith("attribute shard ") and is_number(v)}
    parts: list[str] = []
    for k, v in timings.items():
        if not is_number(v) or k in shards:
            continue
        if k == "attribute" and shards:
            continue
        parts.append(f"{k} {v:.1f}s")
    if shards:
        total = sum(shards.values()) + (timings.get("attribute") or 0.0)
        of = sorted({k.rsplit("/", 1)[-1] for k in shards})
        extra = ", plus an unsharded run" if is_number(timings.get("attribute")) else ""
        parts.insert(
            0,
            f"attribute {total:.1f}s (sharded {' and '.join(of)} ways: the sum of "
            f"{len(shards)} shard run(s){extra})",
        )
    return ", ".join(parts)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def render_markdown(
    doc: Mapping[str, Any], figure_files: Mapping[str, list[str]] | None = None
) -> str:
    """report.md: run facts, paper vs this run, figure links and examples."""
    figure_files = figure_files or {}
    lines = [
        "# Knowledge neurons: reproduction report",
        "",
        "Dai et al. (ACL 2022), *Knowledge Neurons in Pretrained Transformers*, reproduced "
        "with kn_lens. The paper's numbers are for bert-base-cased on PARAREL; this run's "
        "model and data are below.",
        "",
    ]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _meta_lines(doc)]
    lines += ["", "## Facts", ""]
    lines += [_bullet(x) for x in facts_lines(doc)]
    lines += ["", "## Paper vs this run", ""]
    rows = paper_rows(doc)
    if rows:
        lines += ["| analysis | metric | paper | this run |", "|---|---|---:|---:|"]
        lines += [
            f"| {r['analysis']} | {_md(r['metric'])} | {fmt(r['paper'])} | {fmt(r['ours'])} |"
            for r in rows
        ]
    else:
        lines.append("No analysis with paper numbers has been run yet.")
    results = doc.get("results", {})
    for name, analysis in ANALYSES.items():
        title = analysis.title
        if name not in results and name not in figure_files:
            continue
        lines += ["", f"## {title}", ""]
        notes = dig(doc, "paper", name, "note") or dig(ANALYSES[name].paper, "note")
        if notes:
            lines += [f"Paper: {notes}", ""]
        lines += [*(_bullet(x) for x in coverage_text(doc, name)), ""]
        if section_state(doc, name) == "stale":
            continue
        for f in figure_files.get(name, []):
            lines.append(f"- figure: [{Path(f).name}]({f})")
        lines += _table(name, results.get(name), doc.get("meta", {}))
    ex = examples(doc)
    if ex:
        lines += ["", "## Examples", ""]
        for name, lines_of in ex.items():
            title = ANALYSES[name].title
            lines += [f"### {title}", ""] + [f"- {_md(x)}" for x in lines_of] + [""]
    missing = [n for n in ANALYSES if n not in results]
    if missing:
        lines += ["", f"Not run: {', '.join(missing)}."]
    stale = stale_sections(doc)
    if stale:
        lines += [
            "",
            f"Stale (computed on other facts or settings than the latest command's; their "
            f"numbers are not shown): {', '.join(stale)}.",
        ]
    lines += ["", "Figures with plotly.js embedded: report.html.", ""]
    return "\n".join(lines)


def _table(name: str, res: Any, meta: Any) -> list[str]:
    """The analysis' own table (its registry entry's ``table``), as markdown lines."""
    fn = ANALYSES[name].table
    if fn is None or not isinstance(res, dict):
        return []
    try:
        header, rows = fn(res, meta)
    except Exception as e:  # noqa: BLE001 - a table is decoration; never fail the report
        log.warning("no %s table: %s", name, e)
        return []
    if not rows:
        return []
    out = ["", "| " + " | ".join(_md(h) for h in header) + " |"]
    out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(_md(fmt(c)) for c in row) + " |" for row in rows]
    return out


def _bullet(line: str) -> str:
    """A markdown line that ends its line (two trailing spaces), or a list item as it is."""
    return line if line.startswith("- ") else line + "  "


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_html(doc: Mapping[str, Any], figs: list[tuple[str, str, Any]]) -> str:
    """report.html: the markdown report's content with every figure embedded (plotly.js once)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>kn_lens reproduction report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;",
        "padding:.3em .6em;text-align:left}td.n{text-align:right}</style></head><body>",
        "<h1>Knowledge neurons: reproduction report</h1>",
        "<p>Dai et al. (ACL 2022), <i>Knowledge Neurons in Pretrained Transformers</i>, "
        "reproduced with kn_lens. The paper's numbers are for bert-base-cased on PARAREL.</p>",
        "<table>",
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _meta_lines(doc)]
    parts.append("</table><h2>Facts</h2>")
    parts += [f"<p>{e(x)}</p>" for x in facts_lines(doc)]
    parts.append("<h2>Paper vs this run</h2>")
    rows = paper_rows(doc)
    if rows:
        parts.append(
            "<table><tr><th>analysis</th><th>metric</th><th>paper</th><th>this run</th></tr>"
        )
        parts += [
            f"<tr><td>{e(r['analysis'])}</td><td>{e(str(r['metric']))}</td>"
            f"<td class=n>{e(fmt(r['paper']))}</td><td class=n>{e(fmt(r['ours']))}</td>"
            "</tr>"
            for r in rows
        ]
        parts.append("</table>")
    else:
        parts.append("<p>No analysis with paper numbers has been run yet.</p>")
    first = True
    for name, analysis in ANALYSES.items():
        title = analysis.title
        mine = [f for f in figs if f[0] == name]
        if name not in doc.get("results", {}):
            continue
        parts.append(f"<h2>{e(title)}</h2>")
        notes = dig(doc, "paper", name, "note") or dig(analysis.paper, "note")
        if notes:
            parts.append(f"<p>Paper: {e(str(notes))}</p>")
        parts += [f"<p>{e(x)}</p>" for x in coverage_text(doc, name)]
        for _, _, fig in mine:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
    ex = examples(doc)
    if ex:
        parts.append("<h2>Examples</h2>")
        for name, lines_of in ex.items():
            title = ANALYSES[name].title
            parts.append(f"<h3>{e(title)}</h3><ul>")
            parts += [f"<li>{e(x)}</li>" for x in lines_of]
            parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, doc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``figures/*.html`` (sharing one ``figures/plotly.min.js``; ``.png`` beside each when a
    static exporter is installed), ``report.md`` and ``report.html`` (self-contained: plotly.js
    inlined once) into ``out`` from ``out/results.json`` (or ``doc``).

    Returns the written paths; ``"png_skipped"`` holds the exporter's reason when no PNG could be
    written (said once, in full, at INFO; PNG export is then not tried for the other figures)."""
    out = Path(out)
    if doc is None:
        doc = load_results(out / "results.json")
    else:
        check_results(doc)
    figs = figures(doc)
    fig_files: dict[str, list[str]] = {}
    written: dict[str, Any] = {"figures": []}
    png = True
    for name, stem, fig in figs:
        saved = save_figure(fig, out / "figures" / stem, png=png)
        if "png_skipped" in saved:
            png = False
            written["png_skipped"] = saved["png_skipped"]
            log.info("figures are HTML only; PNG export is unavailable: %s", saved["png_skipped"])
        path = Path(saved["html"])
        fig_files.setdefault(name, []).append(str(path.relative_to(out)))
        written["figures"].append(str(path))
    md = out / "report.md"
    md.write_text(render_markdown(doc, fig_files), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(doc, figs), encoding="utf-8")
    written.update(markdown=str(md), html=str(page))
    return written
