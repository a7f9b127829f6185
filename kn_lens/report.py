"""``results.json``: its schema and validator, and the report built from it alone.

``DIR/results.json`` (written by ``kn-lens``; see :mod:`kn_lens.cli`) holds::

    {
      "schema": "kn_lens.results", "schema_version": 1,
      "meta": {
        "model":    {"name": str, "n_layers": int, "d_mlp": int, ...},
        "data":     {"data": str, "lama"/"patterns"/"web": str | null,
                     "relations": [str] | null, "max_bags": int | null, "n_facts": int,
                     "n_relations": int, "facts_per_relation": {relation: int},
                     "relation_labels": {relation: str}},
        "config":   {PaperConfig field: value},       # kn_lens.config.PaperConfig.to_dict()
        "timings":  {step: wall seconds},
        "cpu_seconds": {step: CPU seconds of the process},   # optional
        "versions": {"kn_lens": str, "torch": str, "python": str, ...},
        "created": ISO time, "updated": ISO time, "command": str
      },
      "results": {analysis: Result.to_dict()},   # each has "schema" (str), "schema_version"
                                                # (int) and the fields RESULTS.md documents:
          # "identification" (schema identification, from `kn-lens neurons`),
          # "modify" (modify), "distant" (distant), "trigger" (trigger),
          # "update" (update_facts, from `kn-lens edit`), "erase" (erase_relations)
      "paper":   {analysis: the experiment module's PAPER dict}
    }

:data:`RESULTS_SPEC` states this in a small JSON-schema-like form and :func:`validate_results`
checks a document against it (plus: strict JSON, no NaN). :func:`write_report` turns the file into
``report.md`` (the paper's headline numbers beside this run's, model and data, examples),
``report.html`` (the same with every figure embedded, plotly.js included once) and
``figures/*.html``.
"""

from __future__ import annotations

import html
import importlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "kn_lens.results"
RESULTS_SCHEMA_VERSION = 1

#: analysis name -> (title, experiment module under kn_lens.experiments), in report order.
ANALYSES: dict[str, tuple[str, str]] = {
    "identification": ("Identifying knowledge neurons (Sec. 4, Fig. 3, Tab. 1)", "identification"),
    "modify": ("Suppressing and amplifying knowledge neurons (Sec. 5.1, Fig. 4-5)", "modify"),
    "distant": ("Activation on web prompts T1/T2/T3 (Sec. 5.2, Fig. 6)", "distant"),
    "trigger": ("Prompts that activate knowledge neurons (Sec. 5.2, Tab. 3)", "trigger"),
    "update": ("Updating facts (Sec. 6.1, Tab. 4)", "update"),
    "erase": ("Erasing relations (Sec. 6.2, Tab. 5)", "erase"),
}

#: analysis key in results.json -> the ``schema`` its result carries.
RESULT_SCHEMAS: dict[str, str] = {
    "identification": "identification", "modify": "modify", "distant": "distant",
    "trigger": "trigger", "update": "update_facts", "erase": "erase_relations",
}

# A small JSON-schema-like specification: {"type": ..., "required": {...}, "values": spec}.
_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_OBJ = {"type": "object"}
RESULTS_SPEC: dict[str, Any] = {
    "type": "object",
    "required": {
        "schema": {"type": "string", "const": RESULTS_SCHEMA},
        "schema_version": {"type": "integer", "const": RESULTS_SCHEMA_VERSION},
        "meta": {"type": "object", "required": {
            "model": {"type": "object", "required": {"name": _STR}},
            "data": {"type": "object", "required": {"data": _STR}},
            "config": {"type": "object", "required": {"steps": _INT, "t": _NUM, "p": _NUM,
                                                      "seed": _INT}},
            "timings": {"type": "object", "values": _NUM},
            "versions": {"type": "object", "required": {"kn_lens": _STR, "python": _STR},
                         "values": _STR},
            "created": _STR,
            "updated": _STR,
        }},
        "results": {"type": "object", "values": {"type": "object", "required": {
            "schema": _STR, "schema_version": _INT}}},
        "paper": {"type": "object", "values": {"type": ["object", "null"]}},
    },
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
}


def _check(value: Any, spec: Mapping[str, Any], where: str, errors: list[str]) -> None:
    types = spec.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in spec and value != spec["const"]:
        errors.append(f"{where}: expected {spec['const']!r}, got {value!r}")
    if isinstance(value, dict):
        for key, sub in spec.get("required", {}).items():
            if key not in value:
                errors.append(f"{where}: missing required key {key!r}")
            else:
                _check(value[key], sub, f"{where}.{key}", errors)
        if "values" in spec:
            for key, v in value.items():
                _check(v, spec["values"], f"{where}.{key}", errors)


def validate_results(doc: Any) -> list[str]:
    """Problems of a results.json document against :data:`RESULTS_SPEC` (empty when valid).

    Besides the spec, the document must be strict JSON (no NaN/Infinity), and each known
    analysis must carry its own schema (:data:`RESULT_SCHEMAS`).
    """
    errors: list[str] = []
    _check(doc, RESULTS_SPEC, "results.json", errors)
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        errors.append("results.json: holds NaN or Infinity (not strict JSON)")
    except TypeError as e:
        errors.append(f"results.json: not JSON data ({e})")
    results = doc.get("results") if isinstance(doc, dict) else None
    if isinstance(results, dict):
        for name, want in RESULT_SCHEMAS.items():
            got = results.get(name, {}).get("schema") if isinstance(results.get(name), dict) \
                else None
            if got is not None and got != want:
                errors.append(f"results.json.results.{name}: schema is {got!r}, expected {want!r}")
    return errors


def check_results(doc: Any) -> None:
    """Raise ``ValueError`` listing every problem if ``doc`` is not a valid results.json."""
    errors = validate_results(doc)
    if errors:
        raise ValueError("invalid results.json:\n  " + "\n  ".join(errors))


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate DIR/results.json (``ValueError`` naming the problems)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    check_results(doc)
    return doc


# ----------------------------------------------------------------------------------------------
# Paper vs this run
# ----------------------------------------------------------------------------------------------

def _flatten(d: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Scalar leaves of nested dicts by key path (lists are not entered)."""
    out: dict[tuple[str, ...], Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, (*prefix, str(k))))
    elif isinstance(d, (int, float, str, bool)) or d is None:
        out[prefix] = d
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dig(d: Any, *path: Any) -> Any:
    """``d[p0][p1]...`` or ``None`` when any step is missing."""
    for k in path:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _row(metric: str, paper: Any, ours: Any, note: str = "") -> dict[str, Any]:
    return {"metric": metric, "paper": paper, "ours": ours, "note": note}


def _rows_identification(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    rows = []
    for key, label in (("neurons_per_fact", "knowledge neurons per fact"),
                       ("overlap_same_relation", "shared neurons, same relation"),
                       ("overlap_other_relations", "shared neurons, other relations")):
        for who in ("ours", "baseline"):
            rows.append(_row(f"{label} ({who})", _dig(paper, key, who),
                             _dig(res, "overall", who, key)))
    for who in ("ours", "baseline"):
        pct = _dig(res, "overall", who, "layer_pct")
        if isinstance(pct, list) and pct:
            top = max(1, len(pct) // 3)
            rows.append(_row(f"% of neurons in the top {top} of {len(pct)} layers ({who})",
                             "most (ours)" if who == "ours" else None, sum(pct[-top:])))
    return rows


def _rows_modify(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    rows = []
    for op in ("suppress", "amplify"):
        for who in ("ours", "baseline"):
            rows.append(_row(f"{op}: % change of correct-answer probability ({who})",
                             _dig(paper, op, who), _dig(res, "overall", who, op, "own_pct")))
        rows.append(_row(f"{op}: % change on unrelated facts (ours)", "small",
                         _dig(res, "overall", "ours", op, "other_pct")))
    return rows


def _rows_distant(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    return [_row(f"mean activation on {t} ({who})", _dig(paper, who, t),
                 _dig(res, "overall", who, t))
            for who in ("ours", "baseline") for t in ("T1", "T2", "T3")]


def _rows_trigger(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    return [_row("share of top prompts that state the fact (T1)", "most",
                 _dig(res, "top_t1_share")),
            _row("share of bottom prompts that state the fact (T1)", "few",
                 _dig(res, "bottom_t1_share"))]


def _rows_update(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    rows = []
    for arm, prefix in (("knowledge", ""), ("random", "random_")):
        for m, label in (("success_rate", "success rate"), ("change_rate", "change rate"),
                         ("delta_intra_ppl", "Δ intra-relation perplexity"),
                         ("delta_inter_ppl", "Δ inter-relation perplexity")):
            pv = _dig(paper, prefix + m)
            ov = _dig(res, "summary", arm, m)
            if pv is None and ov is None:
                continue
            rows.append(_row(f"{label} ({'knowledge neurons' if arm == 'knowledge' else 'random neurons'})",
                             pv, ov))
    n = _dig(res, "summary", "knowledge", "n_facts")
    rows.append(_row("facts edited", None, n))
    return rows


#: Labels of the relations whose erasure the paper reports, to match other worlds' relations.
PAPER_RELATION_LABELS = {"P19": "place of birth", "P27": "country of citizenship",
                         "P106": "occupation", "P937": "work location"}


def _rows_erase(res: Any, paper: Any, meta: Any) -> list[dict[str, Any]]:
    rows = []
    labels = _dig(meta, "data", "relation_labels") or {}
    by_label = {v: k for k, v in PAPER_RELATION_LABELS.items()}
    for er in _dig(res, "erasures") or []:
        rel = er.get("relation")
        pk = rel if isinstance(paper, dict) and rel in paper else by_label.get(labels.get(rel, ""))
        name = rel if pk in (None, rel) else f"{rel} (~{pk}, {labels.get(rel)})"
        for m, label in (("ppl_before", "perplexity before"), ("ppl_after", "perplexity after"),
                         ("accuracy_before", "accuracy before"),
                         ("accuracy_after", "accuracy after")):
            rows.append(_row(f"{name}: {label}", _dig(paper, pk, m) if pk else None,
                             _dig(er, "summary", m)))
        rng = _dig(paper, "other_relations_ppl_change")
        change = _dig(er, "summary", "others_mean_ppl_change")
        rows.append(_row(f"{name}: other relations' perplexity change (mean)",
                         f"+{rng[0]:.0%} to +{rng[1]:.0%}" if isinstance(rng, list) and
                         len(rng) == 2 else None,
                         f"{change:+.1%}" if _is_num(change) else None))
    return rows


_ROWS: dict[str, Callable[[Any, Any, Any], list[dict[str, Any]]]] = {
    "identification": _rows_identification, "modify": _rows_modify, "distant": _rows_distant,
    "trigger": _rows_trigger, "update": _rows_update, "erase": _rows_erase,
}


def paper_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's headline numbers beside this run's: ``{"analysis", "metric", "paper",
    "ours"}`` rows, for every analysis in ``doc["results"]``.

    The known analyses have their own mapping from the PAPER dict to the result's fields. For
    another analysis, a module may define ``compare_with_paper(result_dict)`` returning such
    rows; otherwise each numeric PAPER entry at key path ``a.b`` is matched to the shortest key
    path of the result containing the same keys in any order (e.g. ``ours.T1`` ->
    ``overall.ours.T1``), shown as "-" when the run has no such number.
    """
    rows: list[dict[str, Any]] = []
    results = doc.get("results", {})
    meta = doc.get("meta", {})
    papers = dict(doc.get("paper", {}))
    for name, res in results.items():
        if isinstance(res, dict) and isinstance(res.get("paper"), dict):
            papers.setdefault(name, res["paper"])
    for name in [*ANALYSES, *(n for n in results if n not in ANALYSES)]:
        res = results.get(name)
        if not isinstance(res, dict):
            continue
        paper = papers.get(name) if isinstance(papers.get(name), dict) else {}
        fn = _ROWS.get(name) or _module_attr(name, "compare_with_paper")
        if fn is not None:
            try:
                made = fn(res, paper, meta) if name in _ROWS else fn(res)
                rows += [{"analysis": name, **r} for r in made]
                continue
            except Exception as e:  # noqa: BLE001 - a report must still be written
                log.warning("comparing %s with the paper failed (%s); using key matching",
                            name, e)
        flat_res = {k: v for k, v in _flatten({k: v for k, v in res.items()
                                              if k != "paper"}).items() if _is_num(v)}
        for path, pv in _flatten(paper).items():
            if not _is_num(pv):
                continue
            hits = [k for k in flat_res if set(path) <= set(k)]
            ours = flat_res[min(hits, key=len)] if hits else None
            rows.append({"analysis": name, "metric": ".".join(path), "paper": pv, "ours": ours})
    return rows


def _module_attr(analysis: str, attr: str) -> Any:
    module = ANALYSES.get(analysis, (None, analysis))[1]
    try:
        mod = importlib.import_module(f"kn_lens.experiments.{module}")
    except Exception:  # noqa: BLE001 - module absent in this installation
        return None
    return getattr(mod, attr, None)


def _fmt(v: Any) -> str:
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


# ----------------------------------------------------------------------------------------------
# Figures and examples
# ----------------------------------------------------------------------------------------------

#: analysis -> names of kn_lens.plots functions taking the result dict and returning a figure
#: (or a dict of figures). Besides these, any ``kn_lens.plots.<analysis>_figure`` is used. Missing
#: functions are skipped, so the report works with any subset of the analyses.
FIGURES: dict[str, tuple[str, ...]] = {
    "identification": ("layer_distribution_figure", "identification_figure"),
    "modify": ("modify_figure",),
    "distant": ("distant_figure",),
    "trigger": ("trigger_figure",),
    "update": ("update_figure",),
    "erase": ("erase_figure",),
}


def figures(doc: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(analysis, stem, plotly figure)`` for each figure function that applies to ``doc``."""
    try:
        plots = importlib.import_module("kn_lens.plots")
    except Exception as e:  # noqa: BLE001
        log.warning("no figures: kn_lens.plots failed to import (%s)", e)
        return []
    out = []
    for name, res in doc.get("results", {}).items():
        fig_names = list(dict.fromkeys([*FIGURES.get(name, ()), f"{name}_figure"]))
        for fn_name in fig_names:
            fn = getattr(plots, fn_name, None)
            if fn is None:
                continue
            try:
                made = fn(res)
            except Exception as e:  # noqa: BLE001 - one broken figure must not stop the report
                log.warning("figure %s for %s failed: %s", fn_name, name, e)
                continue
            items = made.items() if isinstance(made, dict) else [("", made)]
            for suffix, fig in items:
                if fig is not None:
                    stem = fn_name.removesuffix("_figure").removeprefix("plot_")
                    out.append((name, f"{stem}_{suffix}" if suffix else stem, fig))
    return out


def _spread(items: list[Any], n: int) -> list[Any]:
    """Up to ``n`` items, one per relation first (items are dicts with "relation")."""
    seen: set[Any] = set()
    first, rest = [], []
    for it in items:
        rel = it.get("relation") if isinstance(it, dict) else None
        (rest if rel in seen else first).append(it)
        seen.add(rel)
    return (first + rest)[:n]


def _trigger_examples(res: Mapping[str, Any], n: int) -> list[str]:
    out = []
    facts = [f for f in res.get("facts", []) if isinstance(f, dict) and f.get("top")]
    for f in _spread(facts, n):
        top, bottom = f["top"][0], (f.get("bottom") or [None])[0]
        line = (f"{f.get('subject')} --{f.get('relation')}--> {f.get('object')} "
                f"({len(f.get('neurons', []))} neurons): most activating "
                f"\"{top.get('prompt')}\" ({top.get('type')}, {_fmt(top.get('score'))})")
        if bottom:
            line += (f"; least activating \"{bottom.get('prompt')}\" ({bottom.get('type')}, "
                     f"{_fmt(bottom.get('score'))})")
        out.append(line)
    return out


def _update_examples(res: Mapping[str, Any], n: int) -> list[str]:
    out = []
    facts = [f for f in res.get("facts", []) if isinstance(f, dict)]
    for f in _spread(facts, n):
        k = f.get("knowledge") or {}
        line = (f"{f.get('subject')} ({f.get('relation')}): {f.get('old_answer')} -> "
                f"{f.get('new_answer')} by editing {len(f.get('neurons', []))} neuron(s): "
                f"success {_fmt(k.get('success_rate'))}, change {_fmt(k.get('change_rate'))}, "
                f"Δ intra-ppl {_fmt(k.get('delta_intra_ppl'))}")
        r = f.get("random")
        if isinstance(r, dict):
            line += f"; random neurons: success {_fmt(r.get('success_rate'))}"
        out.append(line)
    return out


def examples(doc: Mapping[str, Any], n: int = 3) -> dict[str, list[str]]:
    """A few activating prompts (trigger) and a few edits (update), as display lines, one fact
    per relation first."""
    out: dict[str, list[str]] = {}
    res = doc.get("results", {})
    for name, fn in (("trigger", _trigger_examples), ("update", _update_examples)):
        if isinstance(res.get(name), dict):
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
        m += (f" ({model['n_layers']} layers, d_mlp {model.get('d_mlp')}, "
              f"{_fmt(model.get('n_params'))} parameters)")
    d = str(data.get("data", "?"))
    for k in ("lama", "patterns", "web"):
        if data.get(k):
            d += f"; {k} {data[k]}"
    if "n_facts" in data:
        d += f" -- {_fmt(data['n_facts'])} facts, {data.get('n_relations', '?')} relation(s)"
    if data.get("max_bags"):
        d += f", at most {data['max_bags']} per relation"
    rows = [("Model", m), ("Data", d)]
    if data.get("relations"):
        rows.append(("Relations", ", ".join(data["relations"])))
    cfg = meta.get("config", {})
    try:
        from kn_lens.config import PaperConfig

        base = PaperConfig().to_dict()
        changed = {k: v for k, v in cfg.items() if k in base and _norm(base[k]) != _norm(v)}
    except Exception:  # noqa: BLE001
        changed = {}
    rows.append(("Config", "the paper's defaults" + (
        "; changed: " + ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "")))
    for key, label in (("timings", "Wall time"), ("cpu_seconds", "CPU time (this process)")):
        t = meta.get(key, {})
        if isinstance(t, dict) and t:
            rows.append((label, ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if _is_num(v))))
    v = meta.get("versions", {})
    if v:
        rows.append(("Versions", ", ".join(f"{k} {x}" for k, x in v.items())))
    for k in ("command", "device", "created", "updated"):
        if meta.get(k):
            rows.append((k.capitalize(), str(meta[k])))
    return rows


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def render_markdown(doc: Mapping[str, Any], figure_files: Mapping[str, list[str]] | None = None
                    ) -> str:
    """report.md: run facts, paper vs this run, figure links and examples."""
    figure_files = figure_files or {}
    lines = ["# Knowledge neurons: reproduction report", "",
             "Dai et al. (ACL 2022), *Knowledge Neurons in Pretrained Transformers*, reproduced "
             "with kn_lens. The paper's numbers are for bert-base-cased on PARAREL; this run's "
             "model and data are below.", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _meta_lines(doc)]
    lines += ["", "## Paper vs this run", ""]
    rows = paper_rows(doc)
    if rows:
        lines += ["| analysis | metric | paper | this run |", "|---|---|---:|---:|"]
        lines += [f"| {r['analysis']} | {_md(r['metric'])} | {_fmt(r['paper'])} | "
                  f"{_fmt(r['ours'])} |" for r in rows]
    else:
        lines.append("No analysis with paper numbers has been run yet.")
    results = doc.get("results", {})
    for name, (title, _) in ANALYSES.items():
        if name not in results and name not in figure_files:
            continue
        lines += ["", f"## {title}", ""]
        notes = (doc.get("paper", {}).get(name) or {}).get("note") if isinstance(
            doc.get("paper", {}).get(name), dict) else None
        if notes:
            lines += [f"Paper: {notes}", ""]
        for f in figure_files.get(name, []):
            lines.append(f"- figure: [{Path(f).name}]({f})")
        if name == "identification":
            lines += _relation_table(results.get(name), doc.get("meta", {}))
    ex = examples(doc)
    if ex:
        lines += ["", "## Examples", ""]
        for name, title in (("trigger", "Activating prompts"), ("update", "Edits")):
            if name in ex:
                lines += [f"### {title}", ""] + [f"- {_md(x)}" for x in ex[name]] + [""]
    missing = [n for n in ANALYSES if n not in results]
    if missing:
        lines += ["", f"Not run: {', '.join(missing)}."]
    lines += ["", "Figures with plotly.js embedded: report.html.", ""]
    return "\n".join(lines)


def _relation_table(res: Any, meta: Any) -> list[str]:
    """Per relation: facts, the adaptive p and neurons per fact (ours and baseline)."""
    rels = _dig(res, "relations")
    if not isinstance(rels, dict) or not rels:
        return []
    labels = _dig(meta, "data", "relation_labels") or {}
    out = ["", "| relation | label | facts | p (ours) | neurons/fact (ours) | p (baseline) | "
           "neurons/fact (baseline) |", "|---|---|---:|---:|---:|---:|---:|"]
    for rel, st in rels.items():
        out.append(f"| {_md(rel)} | {_md(labels.get(rel, ''))} | {_fmt(_dig(st, 'n_facts'))} | "
                   f"{_fmt(_dig(st, 'ours', 'p'))} | {_fmt(_dig(st, 'ours', 'neurons_per_fact'))} | "
                   f"{_fmt(_dig(st, 'baseline', 'p'))} | "
                   f"{_fmt(_dig(st, 'baseline', 'neurons_per_fact'))} |")
    return out


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_html(doc: Mapping[str, Any], figs: list[tuple[str, str, Any]]) -> str:
    """report.html: the markdown report's content with every figure embedded (plotly.js once)."""
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>kn_lens reproduction report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;",
             "padding:.3em .6em;text-align:left}td.n{text-align:right}</style></head><body>",
             "<h1>Knowledge neurons: reproduction report</h1>",
             "<p>Dai et al. (ACL 2022), <i>Knowledge Neurons in Pretrained Transformers</i>, "
             "reproduced with kn_lens. The paper's numbers are for bert-base-cased on PARAREL.</p>",
             "<table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _meta_lines(doc)]
    parts.append("</table><h2>Paper vs this run</h2>")
    rows = paper_rows(doc)
    if rows:
        parts.append("<table><tr><th>analysis</th><th>metric</th><th>paper</th>"
                     "<th>this run</th></tr>")
        parts += [f"<tr><td>{e(r['analysis'])}</td><td>{e(str(r['metric']))}</td>"
                  f"<td class=n>{e(_fmt(r['paper']))}</td><td class=n>{e(_fmt(r['ours']))}</td>"
                  "</tr>" for r in rows]
        parts.append("</table>")
    else:
        parts.append("<p>No analysis with paper numbers has been run yet.</p>")
    first = True
    for name, (title, _) in ANALYSES.items():
        mine = [f for f in figs if f[0] == name]
        if not mine:
            continue
        parts.append(f"<h2>{e(title)}</h2>")
        for _, _, fig in mine:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
    ex = examples(doc)
    if ex:
        parts.append("<h2>Examples</h2>")
        for name, title in (("trigger", "Activating prompts"), ("update", "Edits")):
            if name in ex:
                parts.append(f"<h3>{title}</h3><ul>")
                parts += [f"<li>{e(x)}</li>" for x in ex[name]]
                parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, doc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``figures/*.html`` (each self-contained; ``.png`` beside it when a static exporter is
    installed), ``report.md`` and ``report.html`` (self-contained: plotly.js inlined once) into
    ``out`` from ``out/results.json`` (or ``doc``).
    Returns the written paths."""
    from kn_lens.plots import save_figure

    out = Path(out)
    if doc is None:
        doc = load_results(out / "results.json")
    else:
        check_results(doc)
    figs = figures(doc)
    fig_files: dict[str, list[str]] = {}
    written: dict[str, Any] = {"figures": []}
    for name, stem, fig in figs:
        path = Path(save_figure(fig, out / "figures" / stem)["html"])
        fig_files.setdefault(name, []).append(str(path.relative_to(out)))
        written["figures"].append(str(path))
    md = out / "report.md"
    md.write_text(render_markdown(doc, fig_files), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(doc, figs), encoding="utf-8")
    written.update(markdown=str(md), html=str(page))
    return written
