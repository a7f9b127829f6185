"""Plotly figures of the paper's analyses, and saving them.

Each figure function takes the plain-dict form of a result (``Result.to_dict()``) and the paper's
numbers for that analysis, so figures can be redrawn from ``results.json`` alone. This module
imports nothing of kn_lens but its errors: the registry of analyses (:mod:`kn_lens.experiments`)
names each analysis' figure functions. :func:`save_figure` writes an HTML file that loads the
``plotly.min.js`` saved once beside it and, when a static exporter (kaleido) is installed, a PNG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from kn_lens.errors import KnLensError

log = logging.getLogger(__name__)

# Shared colours: ours vs the activation baseline, everywhere.
OURS_COLOR = "#1f77b4"
BASELINE_COLOR = "#ff7f0e"


def save_figure(fig: go.Figure, stem: str | Path, *, png: bool = True) -> dict[str, str]:
    """Save ``fig`` as ``{stem}.html`` and, with ``png``, ``{stem}.png`` if an exporter exists.

    The HTML file loads ``plotly.min.js`` from its own folder, where plotly writes it once
    (``include_plotlyjs="directory"``), so a folder of figures carries one copy of plotly.js.
    Returns the written paths by format; when the PNG could not be written, ``"png_skipped"`` holds
    the exporter's reason (the caller says it once per run), never an exception. Each file is
    written whole or not at all (a temporary file, then a rename); an HTML file that cannot be
    written (a full disk) is a ``KnLensError`` naming it.
    """
    stem = Path(stem)
    html = stem.with_suffix(".html")
    out = {"html": str(html)}
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KnLensError(f"{stem.parent}: cannot create the folder: {e.strerror or e}") from e
    _write_plotly_js(stem.parent)
    page = fig.to_html(include_plotlyjs="directory", full_html=True)
    _write_atomic(html, lambda tmp: _write_bytes(tmp, page.encode("utf-8")))
    if png:
        png_path = stem.with_suffix(".png")
        try:
            _write_atomic(png_path, lambda tmp: fig.write_image(str(tmp), format="png"))
            out["png"] = str(png_path)
        except Exception as e:  # noqa: BLE001 - kaleido (or Chrome for kaleido>=1) missing
            out["png_skipped"] = (
                " ".join(line.strip() for line in str(e).splitlines() if line.strip())
                or type(e).__name__
            )
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path``: a write
    that fails halfway (a full disk) leaves the previous file, or none, never a truncated one,
    and an ``OSError`` becomes a ``KnLensError`` naming ``path``."""
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; figures are ordinary files
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(e, OSError):
            old = "the previous file is kept" if path.exists() else "it was not created"
            raise KnLensError(
                f"{path}: could not write the figure: {e.strerror or e}; {old}: free some space "
                "and write the report again"
            ) from e
        raise


def _write_plotly_js(folder: Path) -> None:
    """``plotly.min.js`` beside the figures, written once, atomically; a copy of another size
    (cut short by a full disk, or another plotly version's) is replaced."""
    from plotly.offline import get_plotlyjs

    data = get_plotlyjs().encode("utf-8")
    js = folder / "plotly.min.js"
    if js.is_file() and js.stat().st_size == len(data):
        return
    _write_atomic(js, lambda tmp: _write_bytes(tmp, data))


def distant_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Mean knowledge-neuron activation at [MASK] on web prompts T1/T2/T3, ours vs baseline
    (the paper's Figure 6), from a ``DistantResult.to_dict()``. Error bars: standard error over
    facts. The paper's values for its own neurons, when present, are drawn as markers."""
    types = list(result.get("types", ["T1", "T2", "T3"]))
    overall = result["overall"]
    fig = go.Figure()
    for name, label, colour in (
        ("ours", "our knowledge neurons", OURS_COLOR),
        ("baseline", "baseline neurons", BASELINE_COLOR),
    ):
        vals = overall.get(name)
        if not vals:
            continue
        sem = overall.get(f"{name}_sem") or {}
        n = overall.get("n_facts" if name == "ours" else "n_facts_baseline")
        fig.add_bar(
            x=types,
            y=[vals.get(t) for t in types],
            name=f"{label} (n={n} facts)",
            marker_color=colour,
            error_y=dict(type="data", array=[sem.get(t) or 0.0 for t in types], visible=True),
        )
    ours_paper = (paper or {}).get("ours")
    if ours_paper:
        fig.add_scatter(
            x=types,
            y=[ours_paper.get(t) for t in types],
            mode="markers",
            name=f"paper, ours ({paper.get('model', '')})",
            marker=dict(symbol="diamond", size=11, color="black"),
        )
    fig.update_layout(
        barmode="group",
        title="Knowledge-neuron activation on web prompts",
        xaxis_title="prompt type (T1: head+tail, tail masked; T2: head only; T3: random)",
        yaxis_title="mean activation at [MASK]",
        template="plotly_white",
    )
    return fig


def update_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Fact updates (``UpdateResult.to_dict()``): success and change rates, knowledge neurons vs
    random neurons, beside the paper's figures."""
    summary = result.get("summary", {})
    metrics = [("success_rate", "success rate"), ("change_rate", "change rate")]
    labels = [label for _, label in metrics]
    fig = go.Figure()
    for arm, name, color in (
        ("knowledge", "knowledge neurons (ours)", OURS_COLOR),
        ("random", "random neurons", BASELINE_COLOR),
    ):
        if arm in summary:
            fig.add_bar(
                name=name, x=labels, marker_color=color, y=[summary[arm].get(m) for m, _ in metrics]
            )
    if paper:
        fig.add_bar(
            name="paper: knowledge neurons",
            x=labels,
            marker_color="#9ecae1",
            y=[paper.get(m) for m, _ in metrics],
        )
        fig.add_bar(
            name="paper: random neurons",
            x=labels,
            marker_color="#fdd0a2",
            y=[paper.get(f"random_{m}") for m, _ in metrics],
        )
    n = int(summary.get("knowledge", {}).get("n_facts", 0))
    fig.update_layout(
        barmode="group",
        title=f"Updating facts ({n} facts)",
        yaxis=dict(title="share of prompts", tickformat=".0%", range=[0, 1]),
    )
    return fig


def update_rules_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure | None:
    """Fact updates by edit rule (``UpdateResult.to_dict()["rules"]``): efficacy, generalization
    and locality in %, one bar group per metric, one bar per rule; None without rules."""
    rules = result.get("rules") or {}
    if not rules:
        return None
    metrics = [
        ("efficacy", "efficacy"),
        ("generalization", "generalization"),
        ("locality_same_relation", "locality, same relation"),
        ("locality_other_relations", "locality, other relations"),
    ]
    fig = go.Figure()
    for name, r in rules.items():
        fig.add_bar(name=name, x=[label for _, label in metrics], y=[r.get(m) for m, _ in metrics])
    fig.update_layout(
        barmode="group",
        title="Edit rules: efficacy, generalization and locality",
        yaxis=dict(title="% of prompts", range=[0, 100]),
    )
    return fig


def heldout_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Held-out paraphrases (``HeldoutResult.to_dict()``): % change of the correct answer's
    probability when the neurons found on one half of each bag are suppressed, on the held-out
    half and on the half they were found on, knowledge neurons vs random neurons (means over
    relations)."""
    overall = result.get("overall", {})
    x = ["held-out prompts", "prompts they were found on"]
    fig = go.Figure()
    for arm, label, colour in (
        ("ours", "knowledge neurons", OURS_COLOR),
        ("random", "random neurons, same layers", "#969696"),
    ):
        a = overall.get(arm) or {}
        fig.add_bar(
            x=x,
            y=[(a.get(h) or {}).get("pct") for h in ("heldout", "finding")],
            name=label,
            marker_color=colour,
        )
    fig.update_layout(
        barmode="group",
        title="Suppressing neurons found on the other paraphrases",
        yaxis=dict(title="% change of the correct answer's probability"),
    )
    return fig


def erase_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Relation erasure (``EraseResult.to_dict()``): perplexity of the erased relation and of the
    other relations (pooled) before and after zeroing its top knowledge neurons."""
    erasures = result.get("erasures", [])
    x = [e["relation"] for e in erasures]
    s = [e["summary"] for e in erasures]
    fig = go.Figure()
    fig.add_bar(
        name="erased relation, before", x=x, y=[d["ppl_before"] for d in s], marker_color="#c6dbef"
    )
    fig.add_bar(
        name="erased relation, after", x=x, y=[d["ppl_after"] for d in s], marker_color=OURS_COLOR
    )
    fig.add_bar(
        name="other relations, before",
        x=x,
        y=[d["others_ppl_before"] for d in s],
        marker_color="#fdd0a2",
    )
    fig.add_bar(
        name="other relations, after",
        x=x,
        y=[d["others_ppl_after"] for d in s],
        marker_color=BASELINE_COLOR,
    )
    if any("random_ppl_after" in d for d in s):
        fig.add_bar(
            name="erased relation, random neurons zeroed",
            x=x,
            y=[d.get("random_ppl_after") for d in s],
            marker_color="#bbbbbb",
        )
    fig.update_layout(
        barmode="group",
        title="Erasing relations: perplexity of the gold answer",
        yaxis=dict(title="perplexity", type="log"),
        xaxis=dict(title="erased relation"),
    )
    return fig


def layer_distribution_figure(
    result: Mapping[str, Any], paper: Mapping[str, Any], relation: str | None = None
) -> go.Figure:
    """Share (%) of knowledge neurons per layer, ours vs the activation baseline (the paper's
    Figure 4 histogram), from an ``IdentificationResult.to_dict()``; all relations pooled, or one
    ``relation``."""
    stats = result["overall"] if relation is None else result["relations"][relation]
    n_layers = int(result.get("n_layers") or len(stats["ours"]["layer_pct"]))
    layers = [str(i + 1) for i in range(n_layers)]
    fig = go.Figure()
    for name, label, colour in (
        ("ours", "our knowledge neurons", OURS_COLOR),
        ("baseline", "baseline neurons (activation)", BASELINE_COLOR),
    ):
        s = stats.get(name)
        if not s:
            continue
        fig.add_bar(
            x=layers,
            y=s["layer_pct"],
            marker_color=colour,
            name=f"{label} ({sum(s['layer_counts'])} in {s['n_facts']} facts)",
        )
    where = "all relations" if relation is None else f"relation {relation}"
    fig.update_layout(
        barmode="group",
        template="plotly_white",
        title=f"Knowledge neurons per layer ({where})",
        xaxis_title="layer",
        yaxis_title="% of knowledge neurons",
    )
    return fig


def modify_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Suppressing and amplifying knowledge neurons (the paper's Figure 3), from a
    ``ModifyResult.to_dict()``: % change of the correct answer's probability on the facts' own
    prompts and on unrelated facts' prompts, ours vs baseline (means over relations), beside the
    paper's averages (own prompts only; the paper gives none for unrelated facts)."""
    from plotly.subplots import make_subplots

    ops = list(result.get("operations", ["suppress", "amplify"]))
    overall, paper = result["overall"], paper or {}
    fig = make_subplots(rows=1, cols=len(ops), subplot_titles=ops)
    x = ["own facts", "unrelated facts"]
    arms = [
        ("ours", "our knowledge neurons", OURS_COLOR),
        ("baseline", "baseline neurons", BASELINE_COLOR),
        ("random", "random neurons, same layers (control)", "#969696"),
    ]
    for col, op in enumerate(ops, start=1):
        for name, label, colour in arms:
            s = (overall.get(name) or {}).get(op)
            if s is None:
                continue
            fig.add_bar(
                x=x,
                y=[s.get("own_pct"), s.get("other_pct")],
                marker_color=colour,
                name=label,
                legendgroup=name,
                showlegend=col == 1,
                row=1,
                col=col,
            )
        for name, label, colour in (
            ("ours", "paper: knowledge neurons", "#9ecae1"),
            ("baseline", "paper: baseline neurons", "#fdd0a2"),
        ):
            v = (paper.get(op) or {}).get(name)
            if v is not None:
                fig.add_bar(
                    x=x,
                    y=[v, None],
                    marker_color=colour,
                    name=label,
                    legendgroup=f"paper_{name}",
                    showlegend=col == 1,
                    row=1,
                    col=col,
                )
    fig.update_layout(
        barmode="group",
        template="plotly_white",
        title="Suppressing and amplifying knowledge neurons",
    )
    fig.update_yaxes(title_text="% change of correct-answer probability", row=1, col=1)
    return fig


def trigger_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """Share of T1 prompts (head and tail, tail masked) among each fact's top-k and bottom-k
    activating web prompts, from a ``TriggerResult.to_dict()``; bars also give the mean score."""
    facts = [f for f in result.get("facts", []) if isinstance(f, dict)]
    fig = go.Figure()
    xs, shares, means = [], [], []
    for end in ("top", "bottom"):
        items = [p for f in facts for p in (f.get(end) or [])]
        xs.append(f"{end} {result.get('k', '')} prompts")
        shares.append(sum(p.get("type") == "T1" for p in items) / len(items) if items else None)
        scores = [p["score"] for p in items if p.get("score") is not None]
        means.append(sum(scores) / len(scores) if scores else None)
    fig.add_bar(
        x=xs,
        y=shares,
        marker_color=OURS_COLOR,
        name="share of T1 prompts",
        text=[f"mean score {m:.3g}" if m is not None else "" for m in means],
        textposition="outside",
    )
    fig.update_layout(
        title=f"Most and least activating web prompts ({len(facts)} facts)",
        yaxis_title="share of T1 (head + tail) prompts",
        yaxis_range=[0, 1.15],
        template="plotly_white",
        showlegend=False,
    )
    return fig
