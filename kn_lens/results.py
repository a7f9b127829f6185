"""Results as plain data: dataclasses that serialise to JSON with a schema version.

Every analysis returns a dataclass deriving from :class:`Result`. ``result.to_dict()`` gives plain
JSON-able data with ``"schema"`` (the analysis name) and ``"schema_version"``; the report and the
figures are rebuilt from these dicts alone. The fields of each result class are its schema: they are
documented in the class docstrings and in ``RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

SCHEMA_VERSION = 1


def to_jsonable(obj: Any) -> Any:
    """Recursively convert dataclasses, tuples, tensors, numpy values and NaN into JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if isinstance(obj, Result):
            return obj.to_dict()
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch / numpy
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def mean_or_nan(values: Iterable[float] | Iterable[int] | Iterable[bool]) -> float:
    """The mean of ``values``, or NaN when there are none (a statistic over an empty group)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


@dataclasses.dataclass
class Result:
    """Base of all analysis results. Subclasses set ``schema`` and add their fields."""

    schema: ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"schema": self.schema, "schema_version": SCHEMA_VERSION, **d}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


#: One row of the report's "paper vs this run" table.
ReportRow = dict[str, Any]


def report_row(metric: str, paper: Any, ours: Any, note: str = "") -> ReportRow:
    """A ``{"metric", "paper", "ours", "note"}`` row of the paper-vs-run table."""
    return {"metric": metric, "paper": paper, "ours": ours, "note": note}


#: A relative change (Δp / p, in %) is not headlined when the mean probability p it divides by is
#: below this: a large ratio of a tiny probability says nothing about what the model knows.
P_FLOOR = 0.01


def percent(share: Any) -> Any:
    """A share (0-1) in percent: the one unit of every share (rates, flips, accuracy) in the
    report; ``None`` stays ``None``."""
    return 100.0 * share if is_number(share) and math.isfinite(share) else None


def relative_change(pct: Any, p: Any) -> Any:
    """A % change for the report: ``pct``, or a dash saying why when the mean probability ``p``
    it is relative to is below :data:`P_FLOOR` (or unknown)."""
    if not is_number(pct) or not math.isfinite(pct):
        return None
    if not is_number(p):
        return pct
    if p < P_FLOOR:
        return f"- (mean p {p:.2g} is below the {P_FLOOR:g} floor)"
    return pct


def dig(d: Any, *path: Any) -> Any:
    """``d[p0][p1]...`` through dicts and lists, or ``None`` when any step is missing."""
    for k in path:
        if isinstance(d, Mapping) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def is_number(v: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(v: Any) -> str:
    """A number (or anything) as a short display string; ``-`` for None and NaN."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        a = abs(v)
        return f"{v:.3g}" if a and (a < 1e-2 or a >= 1e4) else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def spread_by_relation(items: list[Any], n: int) -> list[Any]:
    """Up to ``n`` items, one per relation first (items are dicts with "relation")."""
    seen: set[Any] = set()
    first: list[Any] = []
    rest: list[Any] = []
    for it in items:
        rel = it.get("relation") if isinstance(it, dict) else None
        (rest if rel in seen else first).append(it)
        seen.add(rel)
    return (first + rest)[:n]
