"""Pages of the docs site that are generated at build time, so they cannot fall behind the code.

mkdocs loads this file as a hook (``hooks:`` in ``mkdocs.yml``). A page that holds a marker line

- ``<!-- generated: analyses -->`` gets one section per entry of the registry
  :data:`kn_lens.experiments.ANALYSES`: what the analysis does (its module's docstring), the
  paper's numbers beside the committed SmolLM2-135M study's (the registry's paper-vs-run rows), and
  its ``results.json`` schema (the fields of its result class and its section of ``RESULTS.md``);
- ``<!-- generated: cli -->`` gets ``kn-lens --help`` and every subcommand's ``--help``.

The functions below take no mkdocs object, so tests call them directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The committed run whose numbers the analyses page shows beside the paper's.
STUDY_RESULTS = ROOT / "studies" / "smollm2-135m" / "run" / "results.json"
STUDY_NAME = "SmolLM2-135M study"
RESULTS_MD = ROOT / "RESULTS.md"
MARKERS = {"analyses": "<!-- generated: analyses -->", "cli": "<!-- generated: cli -->"}

_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?\.?([^`]+)`")
_BORDER = re.compile(r"^=+( +=+)+$")


def _rst_table(lines: list[str]) -> list[str]:
    """An RST simple table (``===  ===`` borders, one header row) as a Markdown table."""
    spans = [m.span() for m in re.finditer(r"=+", lines[0])]

    def cells(line: str) -> list[str]:
        out = []
        for i, (a, _) in enumerate(spans):
            b = spans[i + 1][0] if i + 1 < len(spans) else len(line)
            out.append(line[a:b].strip().replace("|", "\\|"))
        return out

    rows = [cells(x) for x in lines if x.strip() and not _BORDER.match(x.strip())]
    if not rows:
        return []
    head, body = rows[0], rows[1:]
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def rst_to_markdown(text: str) -> str:
    """reStructuredText as this code's docstrings use it, as Markdown: roles (``:mod:`x```)
    become code, simple tables become Markdown tables, ``::`` blocks become fenced code."""
    text = _ROLE.sub(r"`\1`", textwrap.dedent(text).strip("\n"))
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BORDER.match(line.strip()):
            table = [line]
            borders = 1
            i += 1
            while i < len(lines) and borders < 3:
                table.append(lines[i])
                borders += bool(_BORDER.match(lines[i].strip()))
                i += 1
            out += ["", *_rst_table(table), ""]
            continue
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1] if line.strip() != "::" else "")
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            out += ["", "```", code, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _cell(value: Any) -> str:
    from kn_lens.results import fmt

    if value is None:
        return "–"
    if isinstance(value, (str, int, float)):
        text = fmt(value)
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, Mapping):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, d


def _result_classes() -> dict[str, type]:
    """Result subclasses by their ``schema`` (the analysis name), as imported by the registry."""
    from kn_lens.results import Result

    found: dict[str, type] = {}
    todo = list(Result.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found.setdefault(getattr(cls, "schema", ""), cls)
    return found


def _attributes(doc: str | None) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring: name -> description."""
    out: dict[str, str] = {}
    lines = textwrap.dedent(doc or "").splitlines()
    inside, name, indent = False, None, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        m = re.match(r"\s*([A-Za-z_][\w, ]*):\s*(.*)", line)
        if width == indent and m:
            name = m.group(1).strip()
            out[name] = m.group(2).strip()
        elif name is not None:
            out[name] += " " + line.strip()
    return {k: _ROLE.sub(r"`\1`", v) for k, v in out.items()}


def _results_md_sections() -> dict[str, str]:
    """RESULTS.md's ``## `name` — ...`` sections by name, without their heading and up to their
    first subsection (measurements of past runs, not the schema)."""
    if not RESULTS_MD.is_file():
        return {}
    sections: dict[str, str] = {}
    name = None
    for line in RESULTS_MD.read_text(encoding="utf-8").splitlines():
        m = re.match(r"## `([^`]+)`", line)
        if line.startswith("## "):
            name = m.group(1) if m else None
            if name:
                sections[name] = ""
            continue
        if line.startswith("### "):
            name = None
            continue
        if name:
            sections[name] += line + "\n"
    return {k: v.strip() for k, v in sections.items()}


def _study() -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The committed study's paper-vs-run rows by analysis, and its ``meta.data``; empty when the
    study is absent."""
    if not STUDY_RESULTS.is_file():
        return {}, {}
    from kn_lens.report import paper_rows

    doc = json.loads(STUDY_RESULTS.read_text(encoding="utf-8"))
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in paper_rows(doc):
        rows.setdefault(r["analysis"], []).append(r)
    return rows, doc.get("meta", {}).get("data", {})


def _schema_table(cls: type) -> list[str]:
    described = _attributes(cls.__doc__)
    by_field: dict[str, str] = {}
    for names, text in described.items():
        for n in names.split(","):
            by_field[n.strip()] = text
    out = ["| field | type | meaning |", "|---|---|---|"]
    out.append("| `schema`, `schema_version` | str, int | the analysis name; the schema version |")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(f"| `{f.name}` | `{_cell(ftype)}` | {_cell(by_field.get(f.name, ''))} |")
    return out


def analyses_markdown() -> str:
    """One section per analysis of :data:`kn_lens.experiments.ANALYSES`, in the registry's order."""
    from kn_lens.experiments import ANALYSES

    classes = _result_classes()
    sections = _results_md_sections()
    study, study_data = _study()
    about_study = (
        f"Ours are the committed {STUDY_NAME}'s (`studies/smollm2-135m/run/results.json`: "
        f"{study_data.get('n_facts', '?')} PARAREL facts that SmolLM2-135M knows, in "
        f"{study_data.get('n_relations', '?')} relations); the paper's are for bert-base-cased on "
        "PARAREL. `kn-lens reproduce` writes the same rows for your model to `DIR/report.md`."
    )
    out = [
        f"The registry holds {len(ANALYSES)} analyses: "
        + ", ".join(f"[`{n}`](#{n})" for n in ANALYSES)
        + ". Each runs as `kn-lens NAME --out DIR`, is stored under `results.NAME` in "
        "`DIR/results.json` and draws `DIR/figures/NAME.html`.",
        "",
    ]
    for name, a in ANALYSES.items():
        cls = classes.get(name)
        module = sys.modules.get(cls.__module__) if cls else None
        needs = []
        if getattr(a, "needs_scores", False):
            needs.append("the stored attribution scores")
        if getattr(a, "needs_web", False):
            needs.append("web sentences (`--web`, or the built-in world's own)")
        out += [f"## `{name}` {{#{name}}}", "", f"**{a.title}**", ""]
        if module and module.__doc__:
            out += [rst_to_markdown(module.__doc__), ""]
        needed = f"; it needs {' and '.join(needs)}." if needs else "."
        out.append(f"Command: `kn-lens {name} --out DIR`{needed}")
        out.append("")

        out += ["### The paper's numbers and ours", ""]
        rows = study.get(name, [])
        if rows:
            out += [
                about_study,
                "",
                f"| metric | paper | {STUDY_NAME} | note |",
                "|---|---|---|---|",
            ]
            out += [
                f"| {_cell(r['metric'])} | {_cell(r.get('paper'))} | {_cell(r.get('ours'))} | "
                f"{_cell(r.get('note') or '')} |"
                for r in rows
            ]
        else:
            out.append(f"The {STUDY_NAME} has no result for `{name}` yet.")
        paper = dict(_flatten(a.paper))
        if paper:
            entry = f"The registry's paper entry (`results.json` keeps it under `paper.{name}`):"
            out += ["", entry, ""]
            out += [f"- `{k}`: {_cell(v)}" for k, v in paper.items()]
        out.append("")

        out += ["### `results.json` schema", ""]
        if cls is not None:
            out += [
                f"`results.{name}` is `{cls.__module__}.{cls.__name__}.to_dict()`:",
                "",
                *_schema_table(cls),
                "",
            ]
        else:
            out += [f"No result class declares `schema = {name!r}`.", ""]
        if name in sections:
            body = textwrap.indent(sections[name], "    ")
            out += [f'??? note "RESULTS.md on `{name}`"', "", body, ""]
        else:
            out += [f"RESULTS.md has no section on `{name}` yet.", ""]
    return "\n".join(out)


def cli_markdown() -> str:
    """``kn-lens --help`` and each subcommand's ``--help``, as the parser prints them."""
    from kn_lens.cli.parser import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        out = ["### `kn-lens --help`", "", "```text", parser.format_help().rstrip(), "```", ""]
        subs = [
            a
            for a in parser._subparsers._group_actions  # type: ignore[union-attr]
            if hasattr(a, "choices") and isinstance(a.choices, dict)
        ]
        for action in subs:
            for name, sub in action.choices.items():
                out += [
                    f"### `kn-lens {name}`",
                    "",
                    "```text",
                    sub.format_help().rstrip(),
                    "```",
                    "",
                ]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)


GENERATORS = {"analyses": analyses_markdown, "cli": cli_markdown}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **_: Any) -> str:
    """mkdocs hook: replace each marker line by its generated Markdown."""
    for key, marker in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, GENERATORS[key]())
    return markdown
