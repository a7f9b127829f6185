"""Plotly figures of the paper's analyses, and saving them.

Each figure function takes the plain-dict form of a result (``Result.to_dict()``) so figures can be
redrawn from ``results.json`` alone. :func:`save_figure` writes a self-contained HTML file and, when
a static exporter (kaleido) is installed, a PNG beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

log = logging.getLogger(__name__)

# Shared colours: ours vs the activation baseline, everywhere.
OURS_COLOR = "#1f77b4"
BASELINE_COLOR = "#ff7f0e"


def save_figure(fig: go.Figure, stem: str | Path) -> dict[str, str]:
    """Save ``fig`` as ``{stem}.html`` (plotly.js inlined) and ``{stem}.png`` if possible.

    Returns the written paths by format. A missing PNG exporter is logged as a notice, never raised.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {"html": str(stem.with_suffix(".html"))}
    fig.write_html(out["html"], include_plotlyjs=True, full_html=True)
    try:
        fig.write_image(str(stem.with_suffix(".png")))
        out["png"] = str(stem.with_suffix(".png"))
    except Exception as e:  # kaleido (or Chrome for kaleido>=1) not installed
        log.info("PNG export of %s skipped: %s", stem.name, str(e).splitlines()[0] if str(e) else e)
    return out
