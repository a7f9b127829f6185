"""Facts and the bags of prompts that express them.

A :class:`Fact` is one (subject, relation, object) triple. A :class:`FactBag` is a fact with one
prompt per paraphrase template of its relation, each holding exactly one ``[MASK]`` where the
object goes. Every analysis in kn_lens consumes bags; they come from

- :func:`load_pararel` -- the paper's PARAREL patterns over LAMA T-REx facts;
- :func:`load_jsonl_facts` -- a user's own facts in JSON lines;
- :func:`default_facts` -- the built-in fact world of the default model (:mod:`kn_lens.world`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any, Literal

MASK = "[MASK]"
RelationType = Literal["1-1", "N-1", "N-M"]
RELATION_TYPES: tuple[str, ...] = ("1-1", "N-1", "N-M")


class DataError(ValueError):
    """Malformed input data; the message names the file and line (or the offending item)."""


@dataclass(frozen=True)
class Fact:
    """One relational fact: ``subject --relation--> object``."""

    subject: str
    relation: str  # relation id, e.g. "P19"
    relation_label: str  # e.g. "place of birth"
    relation_type: str  # "1-1", "N-1" or "N-M"
    object: str  # the answer; a single vocabulary token for the analyses


@dataclass(frozen=True)
class FactBag:
    """A fact and its prompts: one per paraphrase template, each with exactly one ``[MASK]``.

    ``index`` is the bag's position within its relation (T-REx file order for PARAREL data), which
    the web-prompt analysis uses to pair bags with their sentences. ``held_out`` lists prompts the
    model never saw in training (the default world's held-out templates); it is empty for PARAREL.
    """

    fact: Fact
    prompts: tuple[str, ...]
    index: int = 0
    held_out: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for prompt in (*self.prompts, *self.held_out):
            check_prompt(prompt)

    # Convenience accessors, so analyses can read ``bag.relation`` rather than ``bag.fact.relation``.
    @property
    def subject(self) -> str:
        return self.fact.subject

    @property
    def relation(self) -> str:
        return self.fact.relation

    @property
    def relation_label(self) -> str:
        return self.fact.relation_label

    @property
    def relation_type(self) -> str:
        return self.fact.relation_type

    @property
    def object(self) -> str:
        return self.fact.object

    @property
    def key(self) -> str:
        """A stable id: ``"{relation}/{index}"``."""
        return f"{self.fact.relation}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"fact": asdict(self.fact), "prompts": list(self.prompts), "index": self.index,
                "held_out": list(self.held_out)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FactBag":
        return cls(Fact(**d["fact"]), tuple(d["prompts"]), int(d.get("index", 0)),
                   tuple(d.get("held_out", ())))


def relation_of_key(key: str) -> str:
    """The relation of a bag key: ``"P19/3"`` -> ``"P19"`` (see :attr:`FactBag.key`)."""
    return key.rsplit("/", 1)[0]


def check_prompt(prompt: str) -> str:
    """Return ``prompt`` if it holds exactly one ``[MASK]``; raise ``ValueError`` naming it if not."""
    n = prompt.count(MASK)
    if n != 1:
        raise ValueError(f"prompt must contain exactly one {MASK}, found {n}: {prompt!r}")
    return prompt


def fill_template(template: str, subject: str) -> str:
    """``[X]`` -> subject, ``[Y]`` -> ``[MASK]``."""
    if "[X]" not in template or "[Y]" not in template:
        raise ValueError(f"template must contain [X] and [Y]: {template!r}")
    return template.replace("[X]", subject).replace("[Y]", MASK)


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; blank lines are skipped, malformed ones raise DataError."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def _require(rec: dict[str, Any], keys: Sequence[str], path: Path, n: int) -> None:
    missing = [k for k in keys if not isinstance(rec.get(k), str) or not rec.get(k)]
    if missing:
        raise DataError(f"{path}, line {n}: missing or non-string field(s) {', '.join(missing)}")


def load_relations(lama_dir: str | Path) -> dict[str, dict[str, Any]]:
    """LAMA's ``relations.jsonl``: relation id -> its record (label, template, type, ...)."""
    path = Path(lama_dir) / "relations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"LAMA relations file not found: {path}")
    out: dict[str, dict[str, Any]] = {}
    for n, rec in _read_jsonl(path):
        _require(rec, ("relation", "type"), path, n)
        if rec["type"] not in RELATION_TYPES:
            raise DataError(f"{path}, line {n}: unknown relation type {rec['type']!r}")
        out[rec["relation"]] = rec
    return out


def load_patterns(path: str | Path) -> list[str]:
    """The ``pattern`` strings of one PARAREL patterns file, in file order."""
    path = Path(path)
    patterns = []
    for n, rec in _read_jsonl(path):
        _require(rec, ("pattern",), path, n)
        if "[X]" not in rec["pattern"] or "[Y]" not in rec["pattern"]:
            raise DataError(f"{path}, line {n}: pattern lacks [X] or [Y]: {rec['pattern']!r}")
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
    fact of it becomes a bag with one prompt per pattern (``[X]`` -> subject, ``[Y]`` -> ``[MASK]``);
    the answer is the object label, the type comes from ``relations.jsonl``. Relations come in
    sorted id order, facts in T-REx file order (``bag.index`` is the line's rank in its file).

    Args:
        lama_dir: folder with ``relations.jsonl`` and ``TREx/P*.jsonl``.
        patterns_dir: folder with PARAREL ``P*.jsonl`` pattern files.
        relations: only these relation ids (default: all that qualify). An id that does not
            qualify raises ``ValueError`` naming it.
    """
    lama_dir, patterns_dir = Path(lama_dir), Path(patterns_dir)
    trex_dir = lama_dir / "TREx"
    for d in (trex_dir, patterns_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"data folder not found: {d}")
    rel_info = load_relations(lama_dir)
    available = sorted(
        p.stem for p in patterns_dir.glob("P*.jsonl") if (trex_dir / p.name).is_file()
    )
    patterns = {r: load_patterns(patterns_dir / f"{r}.jsonl") for r in available}
    qualifying = [r for r in available if len(patterns[r]) >= min_patterns and r in rel_info]
    if relations is not None:
        unknown = [r for r in relations if r not in qualifying]
        if unknown:
            raise ValueError(
                f"unknown relation(s) {', '.join(unknown)}; available: {', '.join(qualifying)}"
            )
        qualifying = [r for r in qualifying if r in set(relations)]
    bags: list[FactBag] = []
    for rel in qualifying:
        info = rel_info[rel]
        path = trex_dir / f"{rel}.jsonl"
        for i, (n, rec) in enumerate(_read_jsonl(path)):
            _require(rec, ("sub_label", "obj_label"), path, n)
            fact = Fact(rec["sub_label"], rel, info.get("label", rel), info["type"], rec["obj_label"])
            prompts = tuple(fill_template(p, fact.subject) for p in patterns[rel])
            bags.append(FactBag(fact, prompts, index=i))
    return bags


def load_jsonl_facts(path: str | Path) -> list[FactBag]:
    """A user's own facts: one JSON object a line with ``subject``, ``relation``, ``object`` and
    ``templates`` (a list of strings with ``[X]`` and ``[Y]``); optional ``relation_label`` and
    ``relation_type`` (default ``"N-M"``). Bags are indexed per relation in file order."""
    path = Path(path)
    bags: list[FactBag] = []
    counts: dict[str, int] = {}
    for n, rec in _read_jsonl(path):
        _require(rec, ("subject", "relation", "object"), path, n)
        templates = rec.get("templates")
        if not isinstance(templates, list) or not templates or not all(
            isinstance(t, str) for t in templates
        ):
            raise DataError(f"{path}, line {n}: 'templates' must be a non-empty list of strings")
        rtype = rec.get("relation_type", "N-M")
        if rtype not in RELATION_TYPES:
            raise DataError(f"{path}, line {n}: unknown relation_type {rtype!r}")
        try:
            prompts = tuple(fill_template(t, rec["subject"]) for t in templates)
        except ValueError as e:
            raise DataError(f"{path}, line {n}: {e}") from None
        fact = Fact(rec["subject"], rec["relation"], rec.get("relation_label", rec["relation"]),
                    rtype, rec["object"])
        idx = counts.get(fact.relation, 0)
        counts[fact.relation] = idx + 1
        bags.append(FactBag(fact, prompts, index=idx))
    return bags


@dataclass
class VocabCheck:
    """Result of :func:`filter_single_token`: the kept bags and the skipped ones, with reasons."""

    kept: list[FactBag]
    skipped: list[tuple[FactBag, str]]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def filter_single_token(
    bags: Sequence[FactBag], tokenizer: Any, *, on_error: Literal["skip", "raise"] = "skip"
) -> VocabCheck:
    """Keep bags whose object is exactly one vocabulary token (the paper keeps only these).

    With ``on_error="raise"`` the first offending object raises ``ValueError`` naming it and its
    fact; with ``"skip"`` it is dropped and counted in the returned :class:`VocabCheck`.
    """
    from kn_lens.prompts import answer_token_id  # local: prompts imports torch

    kept, skipped = [], []
    for bag in bags:
        try:
            answer_token_id(tokenizer, bag.object)
        except ValueError as e:
            if on_error == "raise":
                raise ValueError(f"fact {bag.key} ({bag.subject!r}): {e}") from None
            skipped.append((bag, str(e)))
        else:
            kept.append(bag)
    return VocabCheck(kept, skipped)


def default_facts() -> list[FactBag]:
    """The bags of the built-in fact world that the default model was trained on."""
    from kn_lens import world

    return world.default_bags()
