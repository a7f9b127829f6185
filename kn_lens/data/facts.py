"""Facts and the bags of prompts that express them.

A :class:`Fact` is one (subject, relation, object) triple. A :class:`FactBag` is a fact with one
prompt per paraphrase template of its relation, each holding exactly one ``[MASK]`` where the
object goes. Every analysis in kn_lens consumes bags; they come from

- :func:`kn_lens.data.pararel.load_pararel` -- the paper's PARAREL patterns over LAMA T-REx facts;
- :func:`load_jsonl_facts` -- a user's own facts in JSON lines;
- :func:`kn_lens.data.world.default_facts` -- the built-in fact world of the default model.

This package holds facts only: no torch, no model.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kn_lens.errors import KnLensError

MASK = "[MASK]"
RelationType = Literal["1-1", "N-1", "N-M"]
RELATION_TYPES: tuple[str, ...] = ("1-1", "N-1", "N-M")

log = logging.getLogger(__name__)


class DataError(KnLensError):
    """Malformed input data; the message names the file and line (or the offending item)."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder does not exist; the message names it. Also a ``FileNotFoundError``,
    as it was before :class:`DataError` covered it."""


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
    """A fact and its prompts: one per paraphrase template, each with exactly one ``[MASK]``, or,
    for a decoder (:meth:`to_prefix_bag`), each the text before the answer.

    ``index`` is the bag's position within its relation (T-REx file order for PARAREL data), which
    the web-prompt analysis uses to pair bags with their sentences. ``held_out`` lists prompts the
    model never saw in training (the default world's held-out templates); it is empty for PARAREL.
    """

    fact: Fact
    prompts: tuple[str, ...]
    index: int = 0
    held_out: tuple[str, ...] = field(default=())
    #: True for a decoder bag (:meth:`to_prefix_bag`): each prompt is the text before the answer.
    prefix: bool = False

    def __post_init__(self) -> None:
        for prompt in (*self.prompts, *self.held_out):
            if not self.prefix:
                check_prompt(prompt)
            elif MASK in prompt or not prompt.strip():
                raise DataError(
                    f"a decoder prompt is the non-empty text before the answer, without {MASK}: "
                    f"{prompt!r}"
                )

    @property
    def is_prefix(self) -> bool:
        """True for a decoder bag, whose prompts are the text before the answer (no ``[MASK]``)."""
        return self.prefix

    def to_prefix_bag(self) -> tuple[FactBag | None, int]:
        """This bag for a decoder: each prompt cut to its text before ``[MASK]``
        (:func:`prefix_prompt`), and the number of prompts dropped because the answer comes before
        the subject. ``None`` when no prompt is left. A prefix bag is returned unchanged."""
        if self.is_prefix:
            return self, 0
        kept = [q for q in (prefix_prompt(p, self.subject) for p in self.prompts) if q]
        held = [q for q in (prefix_prompt(p, self.subject) for p in self.held_out) if q]
        dropped = len(self.prompts) - len(kept)
        if not kept:
            return None, dropped
        return (
            FactBag(self.fact, tuple(dict.fromkeys(kept)), self.index, tuple(held), prefix=True),
            dropped,
        )

    # Convenience accessors, so analyses can read ``bag.relation`` rather than
    # ``bag.fact.relation``.
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
        out = {
            "fact": asdict(self.fact),
            "prompts": list(self.prompts),
            "index": self.index,
            "held_out": list(self.held_out),
        }
        if self.prefix:
            out["prefix"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FactBag:
        return cls(
            Fact(**d["fact"]),
            tuple(d["prompts"]),
            int(d.get("index", 0)),
            tuple(d.get("held_out", ())),
            bool(d.get("prefix", False)),
        )


@dataclass
class BagCheck:
    """Which fact bags a model can use.

    Attributes:
        kept: the usable bags, as the model reads them (decoder bags hold decoder prompts).
        skipped: the unusable bags, each with the reason.
        dropped_prompts: per relation, prompts dropped from kept bags (a decoder drops the
            templates whose answer comes before the subject).
    """

    kept: list[FactBag]
    skipped: list[tuple[FactBag, str]] = field(default_factory=list)
    dropped_prompts: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def log(
        self, n_total: int | None = None, *, logger: logging.Logger | None = None, limit: int = 20
    ) -> None:
        """Name the skipped facts and count the dropped prompts per relation, at INFO."""
        out = logger or log
        if self.n_skipped:
            of = f" of {n_total}" if n_total is not None else ""
            out.info("skipped %d%s facts the model cannot use", self.n_skipped, of)
            for bag, reason in self.skipped[:limit]:
                out.info("  skipped %s (%s -> %s): %s", bag.key, bag.subject, bag.object, reason)
            if self.n_skipped > limit:
                out.info("  ... and %d more not listed", self.n_skipped - limit)
        for rel, n in sorted(self.dropped_prompts.items()):
            if n:
                out.info("  %s: %d prompt(s) dropped (the answer comes before the subject)", rel, n)


def relation_of_key(key: str) -> str:
    """The relation of a bag key: ``"P19/3"`` -> ``"P19"`` (see :attr:`FactBag.key`)."""
    return key.rsplit("/", 1)[0]


def check_prompt(prompt: str) -> str:
    """Return ``prompt`` if it holds exactly one ``[MASK]``; raise ``DataError`` naming it if
    not."""
    n = prompt.count(MASK)
    if n != 1:
        raise DataError(f"prompt must contain exactly one {MASK}, found {n}: {prompt!r}")
    return prompt


def prefix_prompt(prompt: str, subject: str | None = None) -> str | None:
    """A masked prompt as a decoder prompt: its text before ``[MASK]``, trailing whitespace removed
    (the answer brings its own leading space).

    ``None`` when nothing is left, or when ``subject`` is given and does not occur before the mask
    (a template whose ``[Y]`` comes before ``[X]``: the subject would follow the answer).
    ``"The official language of France is the [MASK] language."`` -> ``"The official language of
    France is the"``.
    """
    check_prompt(prompt)
    head = prompt[: prompt.index(MASK)].rstrip()
    if not head.strip() or (subject is not None and subject not in head):
        return None
    return head


def fill_template(template: str, subject: str) -> str:
    """``[X]`` -> subject, ``[Y]`` -> ``[MASK]``.

    Raises:
        DataError: the template lacks ``[X]``, holds ``[Y]`` other than exactly once, or holds
            ``[MASK]`` itself; or the subject holds ``[MASK]`` or ``[Y]``. The message quotes it.
    """
    if "[X]" not in template:
        raise DataError(f"template must contain [X]: {template!r}")
    n_y = template.count("[Y]")
    if n_y != 1:
        raise DataError(f"template must contain [Y] exactly once, found {n_y}: {template!r}")
    if MASK in template:
        raise DataError(f"template must not contain {MASK} (use [Y]): {template!r}")
    for marker in (MASK, "[Y]"):
        if marker in subject:
            raise DataError(f"subject must not contain {marker}: {subject!r}")
    return template.replace("[X]", subject).replace("[Y]", MASK)


_BOM = b"\xef\xbb\xbf"


def _decode_line(raw: bytes, path: Path, n: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}, line {n}: not UTF-8 (byte {raw[e.start]:#04x} at byte offset "
            f"{offset + e.start} of the file, column {e.start + 1} of the line)"
        ) from None


def read_text_lines(path: str | Path) -> Iterable[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 text file (a BOM at its start is dropped).

    Raises:
        DataError: bytes that are not UTF-8, naming the file, the line and the byte offset.
    """
    path = Path(path)
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            start = len(_BOM) if n == 1 and raw.startswith(_BOM) else 0
            yield n, _decode_line(raw[start:], path, n, offset + start)
            offset += len(raw)


def read_text(path: str | Path) -> str:
    """The whole text of a UTF-8 file (a BOM at its start dropped); :class:`DataError` names the
    file, line and byte offset of bytes that are not UTF-8."""
    return "".join(line for _, line in read_text_lines(path))


def read_jsonl_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; blank lines are skipped, malformed ones raise DataError
    (naming the file and line). A UTF-8 BOM at the start of the file is accepted."""
    for n, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec


def require_strings(rec: dict[str, Any], keys: Sequence[str], path: Path, n: int) -> None:
    missing = [k for k in keys if not isinstance(rec.get(k), str) or not rec.get(k)]
    if missing:
        raise DataError(f"{path}, line {n}: missing or non-string field(s) {', '.join(missing)}")


def _relation_fields(
    records: Sequence[tuple[int, dict[str, Any]]], path: Path
) -> dict[str, tuple[str, str]]:
    """Each relation's ``(relation_label, relation_type)``: the value given on any of its lines,
    else the defaults (the relation id, ``"N-M"``). Two lines giving different values for one
    relation raise :class:`DataError` naming both lines."""
    given: dict[tuple[str, str], tuple[int, Any]] = {}
    for n, rec in records:
        for key in ("relation_label", "relation_type"):
            if key not in rec:
                continue
            value = rec[key]
            if key == "relation_label" and (not isinstance(value, str) or not value.strip()):
                raise DataError(f"{path}, line {n}: 'relation_label' must be a non-blank string")
            if key == "relation_type" and value not in RELATION_TYPES:
                raise DataError(f"{path}, line {n}: unknown relation_type {value!r}")
            first = given.setdefault((rec["relation"], key), (n, value))
            if first[1] != value:
                raise DataError(
                    f"{path}, line {n}: relation {rec['relation']!r} has {key} {value!r} here "
                    f"but {first[1]!r} on line {first[0]}"
                )
    out = {}
    for _, rec in records:
        rel = rec["relation"]
        label = given.get((rel, "relation_label"), (0, rel))[1]
        out[rel] = (label, given.get((rel, "relation_type"), (0, "N-M"))[1])
    return out


def load_jsonl_facts(path: str | Path) -> list[FactBag]:
    """A user's own facts: one JSON object a line with ``subject``, ``relation``, ``object`` and
    ``templates`` (a list of strings with ``[X]`` and ``[Y]``); optional ``relation_label`` and
    ``relation_type`` (default ``"N-M"``). Bags are indexed per relation in file order.

    A relation's label and type may be given on any of its lines (they apply to all of them), and
    must not differ between lines. A line repeating an earlier line's fact (same subject, relation
    and object) is logged as a warning naming both lines, and dropped: each fact is scored once.
    A template repeated within a line is logged and kept once.

    Raises:
        DataError: naming the file and line (and the earlier line it disagrees with).
    """
    path = Path(path)
    records = list(read_jsonl_records(path))
    if not records:
        raise DataError(
            f"{path}: holds no facts (expected one JSON object a line with subject, relation, "
            "object and templates)"
        )
    for n, rec in records:
        require_strings(rec, ("subject", "relation", "object"), path, n)
        blank = [k for k in ("subject", "relation", "object") if not rec[k].strip()]
        if blank:
            raise DataError(f"{path}, line {n}: blank field(s) {', '.join(blank)}")
    relation_fields = _relation_fields(records, path)
    bags: list[FactBag] = []
    counts: dict[str, int] = {}
    first_line: dict[tuple[str, str, str], int] = {}
    for n, rec in records:
        templates = rec.get("templates")
        if (
            not isinstance(templates, list)
            or not templates
            or not all(isinstance(t, str) for t in templates)
        ):
            raise DataError(f"{path}, line {n}: 'templates' must be a non-empty list of strings")
        unique = list(dict.fromkeys(templates))
        if len(unique) < len(templates):
            log.warning(
                "%s:%d: %d repeated template(s) kept once", path, n, len(templates) - len(unique)
            )
        try:
            prompts = tuple(fill_template(t, rec["subject"]) for t in unique)
        except ValueError as e:
            raise DataError(f"{path}, line {n}: {e}") from None
        label, rtype = relation_fields[rec["relation"]]
        fact = Fact(rec["subject"], rec["relation"], label, rtype, rec["object"])
        ident = (fact.subject, fact.relation, fact.object)
        if ident in first_line:
            log.warning(
                "%s:%d: duplicate of the fact on line %d (%s, %s, %s): kept once",
                path,
                n,
                first_line[ident],
                *ident,
            )
            continue
        first_line[ident] = n
        idx = counts.get(fact.relation, 0)
        counts[fact.relation] = idx + 1
        bags.append(FactBag(fact, prompts, index=idx))
    return bags


def sample_bags(bags: Sequence[FactBag], max_bags: int | None, seed: int) -> list[FactBag]:
    """At most ``max_bags`` bags per relation: a seeded random sample, kept in the given order.

    The sample of a relation depends only on ``seed``, the relation id and its bag count, so every
    shard and every later command selects the same facts.
    """
    if max_bags is None:
        return list(bags)
    by_rel: dict[str, list[int]] = {}
    for i, b in enumerate(bags):
        by_rel.setdefault(b.relation, []).append(i)
    keep: set[int] = set()
    for rel, idx in by_rel.items():
        if len(idx) <= max_bags:
            keep.update(idx)
        else:
            rng = random.Random(f"{seed}:{rel}:{len(idx)}")
            keep.update(rng.sample(idx, max_bags))
    return [b for i, b in enumerate(bags) if i in keep]


def read_keys(path: str | Path) -> list[str]:
    """Fact keys (``RELATION/INDEX``) listed in a text file, one per line; blank lines and ``#``
    comments are ignored. A malformed line raises :class:`DataError` naming the file and line."""
    keys = []
    for n, line in read_text_lines(path):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        rel, _, idx = text.rpartition("/")
        if not rel or not idx.isdigit():
            raise DataError(f"{path}:{n}: expected a fact key like P37/12, got {text!r}")
        keys.append(text)
    if not keys:
        raise DataError(f"{path}: no fact keys")
    return keys


def select_keys(bags: Sequence[FactBag], keys: Sequence[str], source: object = "") -> list[FactBag]:
    """The bags with these keys, in the bags' order; a key with no bag raises :class:`DataError`
    naming it (a fact the model cannot use counts as missing)."""
    have = {b.key for b in bags}
    missing = [k for k in dict.fromkeys(keys) if k not in have]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} listed fact(s) are not among the usable facts "
            f"(e.g. {', '.join(missing[:5])})"
        )
    want = set(keys)
    return [b for b in bags if b.key in want]


def cap_prompts(bag: FactBag, max_prompts: int, seed: int) -> FactBag:
    """The bag with at most ``max_prompts`` prompts: a seeded random sample (by the bag's key), in
    template order."""
    if len(bag.prompts) <= max_prompts:
        return bag
    rng = random.Random(f"{seed}:prompts:{bag.key}")
    keep = sorted(rng.sample(range(len(bag.prompts)), max_prompts))
    return FactBag(
        bag.fact, tuple(bag.prompts[i] for i in keep), bag.index, bag.held_out, bag.prefix
    )
