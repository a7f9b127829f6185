"""The paper's data: LAMA T-REx facts and PARAREL paraphrase patterns, as bags of prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kn_lens.data.facts import (
    RELATION_TYPES,
    DataError,
    Fact,
    FactBag,
    MissingDataError,
    fill_template,
    read_jsonl_records,
    require_strings,
)


def load_relations(lama_dir: str | Path) -> dict[str, dict[str, Any]]:
    """LAMA's ``relations.jsonl``: relation id -> its record (label, template, type, ...)."""
    path = Path(lama_dir) / "relations.jsonl"
    if not path.is_file():
        raise MissingDataError(f"LAMA relations file not found: {path}")
    out: dict[str, dict[str, Any]] = {}
    for n, rec in read_jsonl_records(path):
        require_strings(rec, ("relation", "type"), path, n)
        if rec["type"] not in RELATION_TYPES:
            raise DataError(f"{path}, line {n}: unknown relation type {rec['type']!r}")
        out[rec["relation"]] = rec
    return out


def load_patterns(path: str | Path) -> list[str]:
    """The ``pattern`` strings of one PARAREL patterns file, in file order."""
    path = Path(path)
    patterns = []
    for n, rec in read_jsonl_records(path):
        require_strings(rec, ("pattern",), path, n)
        try:
            fill_template(rec["pattern"], "")  # [X] present, [Y] once, no [MASK]
        except ValueError as e:
            raise DataError(f"{path}, line {n}: {e}") from None
        patterns.append(rec["pattern"])
    return patterns


def load_pararel(
    lama_dir: str | Path,
    patterns_dir: str | Path,
    *,
    relations: Sequence[str] | None = None,
    min_patterns: int = 4,
) -> list[FactBag]:
    """Build the paper's bags from LAMA T-REx facts and PARAREL patterns.

    A relation is kept when it has a T-REx file and more than 3 patterns (``min_patterns=4``). Each
    fact of it becomes a bag with one prompt per pattern (``[X]`` -> subject, ``[Y]`` ->
    ``[MASK]``); the answer is the object label, the type comes from ``relations.jsonl``.
    Relations come in sorted id order, facts in T-REx file order (``bag.index`` is the line's rank
    in its file).

    Args:
        lama_dir: folder with ``relations.jsonl`` and ``TREx/P*.jsonl``.
        patterns_dir: folder with PARAREL ``P*.jsonl`` pattern files.
        relations: only these relation ids (default: all that qualify). An id that does not
            qualify raises ``DataError`` naming it.
    """
    lama_dir, patterns_dir = Path(lama_dir), Path(patterns_dir)
    trex_dir = lama_dir / "TREx"
    for d in (trex_dir, patterns_dir):
        if not d.is_dir():
            raise MissingDataError(f"data folder not found: {d}")
    rel_info = load_relations(lama_dir)
    available = sorted(
        p.stem for p in patterns_dir.glob("P*.jsonl") if (trex_dir / p.name).is_file()
    )
    patterns = {r: load_patterns(patterns_dir / f"{r}.jsonl") for r in available}
    qualifying = [r for r in available if len(patterns[r]) >= min_patterns and r in rel_info]
    if relations is not None:
        unknown = [r for r in relations if r not in qualifying]
        if unknown:
            raise DataError(
                f"unknown relation(s) {', '.join(unknown)}; available: {', '.join(qualifying)}"
            )
        qualifying = [r for r in qualifying if r in set(relations)]
    bags: list[FactBag] = []
    for rel in qualifying:
        info = rel_info[rel]
        path = trex_dir / f"{rel}.jsonl"
        for i, (n, rec) in enumerate(read_jsonl_records(path)):
            require_strings(rec, ("sub_label", "obj_label"), path, n)
            fact = Fact(
                rec["sub_label"], rel, info.get("label", rel), info["type"], rec["obj_label"]
            )
            try:
                prompts = tuple(fill_template(p, fact.subject) for p in patterns[rel])
            except ValueError as e:
                raise DataError(f"{path}, line {n}: {e}") from None
            bags.append(FactBag(fact, prompts, index=i))
    return bags
