"""Crash-safe storage of per-fact results for long runs: append-only JSON lines, resume, shards.

Attribution over tens of thousands of facts takes hours, so its results are written fact by fact:

- one JSON-lines file per relation (and per shard), one record per fact, each record carrying its
  ``"key"`` (the bag key, ``"P19/3"``);
- a record is appended as one whole line (``json + "\\n"``) with a single ``write`` loop, then
  flushed to disk with ``fsync``. A process killed mid-run (``kill -9``) can therefore leave at most
  a *torn last line* -- bytes after the last newline. :class:`JsonlStore` cuts such a tail away when
  it opens the file for appending, and :func:`read_jsonl` ignores it, so no reader ever sees a half
  record;
- each line carries ``_sha256``, a checksum of its record: a line changed by hand after kn_lens
  wrote it (a score edited, a key renamed) is refused with an error naming the file and line,
  never read as a result (lines from before checksums have none and are read as they are);
- running again skips the keys already stored (in *any* shard's file of the relation), so a
  resumed run ends with every fact exactly once;
- ``--shard K/N`` splits the facts between independent processes: fact number ``i`` (0-based, in
  the global order of the selected facts) belongs to shard ``K`` (1-based) when ``i % N == K - 1``.
  Each shard writes its own files (``P19.shard2of4.jsonl``); later steps read the union
  (:func:`read_union`).

File names: ``{dir}/{relation}.jsonl`` without sharding, ``{dir}/{relation}.shard{K}of{N}.jsonl``
with it. Relation ids that are not plain file names are made safe by :func:`safe_name`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kn_lens.errors import KnLensError

try:  # POSIX advisory locks keep two processes from appending to the same file at once.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "Shard",
    "JsonlStore",
    "FactLogFile",
    "Record",
    "StoreError",
    "safe_name",
    "relation_files",
    "check_store_names",
    "repair_jsonl",
    "read_jsonl",
    "read_union",
    "stored_keys",
    "write_json_atomic",
]


class StoreError(KnLensError):
    """A store file is corrupt beyond a torn last line, or is busy in another process."""


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based): fact ``i`` (0-based global order) belongs to it when
    ``i % n == k - 1``. ``Shard(1, 1)`` is the whole run."""

    k: int = 1
    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1 or not 1 <= self.k <= self.n:
            raise StoreError(f"bad shard {self.k}/{self.n}: need 1 <= K <= N (shards are 1-based)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/4"`` -> ``Shard(2, 4)``; ``StoreError`` with the expected form otherwise."""
        m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
        if not m:
            raise StoreError(f"bad shard {text!r}: expected K/N, e.g. 1/4 (shards are 1-based)")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, i: int) -> bool:
        """Whether fact number ``i`` (0-based global order) is this shard's."""
        return i % self.n == self.k - 1

    def select(self, items: Iterable[Any]) -> list[Any]:
        """This shard's items of a globally ordered sequence."""
        return [x for i, x in enumerate(items) if self.owns(i)]

    @property
    def suffix(self) -> str:
        """File-name suffix: ``""`` for the whole run, ``".shard2of4"`` otherwise."""
        return "" if self.n == 1 else f".shard{self.k}of{self.n}"

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def safe_name(relation: str) -> str:
    """A file-name-safe form of a relation id (``"P19"`` stays ``"P19"``).

    Characters outside ``[A-Za-z0-9_-]`` become ``_`` and a short hash of the original is added,
    so two different ids never share a file.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", relation)
    if safe != relation or not safe:
        safe = f"{safe}-{hashlib.sha1(relation.encode()).hexdigest()[:8]}"
    return safe


def check_store_names(relations: Iterable[str], directory: str | Path) -> None:
    """Refuse two relation ids whose store files in ``directory`` would be one file (equal safe
    names, or names equal but for case, one file on a case-insensitive file system).

    Raises:
        StoreError: naming both relation ids and the file.
    """
    seen: dict[str, str] = {}
    for rel in dict.fromkeys(relations):
        name = safe_name(rel).casefold()
        if name in seen:
            raise StoreError(
                f"relations {seen[name]!r} and {rel!r} would share the store file "
                f"{Path(directory) / (safe_name(rel) + '.jsonl')}; rename one of them in the "
                "facts file"
            )
        seen[name] = rel


def relation_files(directory: str | Path, relation: str) -> list[Path]:
    """All files of ``relation`` in ``directory``: the unsharded one and every shard's, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pat = re.compile(re.escape(safe_name(relation)) + r"(\.shard\d+of\d+)?\.jsonl")
    return sorted(p for p in directory.iterdir() if pat.fullmatch(p.name) and p.is_file())


def _split_complete(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines of ``data`` and the byte length they span (up to the last newline)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


class Record(dict[str, Any]):
    """A record read from a store file: a plain ``dict`` that also knows where it was read,
    ``source`` = ``"FILE:LINE"``, so that a later check of its content can name the line."""

    source: str = ""


class _NonFinite(Exception):
    """Raised while parsing a line that holds ``NaN``, ``Infinity`` or an overflowing number."""


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # e.g. 1e999, which Python's json reads as inf
        raise _NonFinite(text)
    return x


def _no_constant(text: str) -> float:
    raise _NonFinite(text)  # NaN, Infinity, -Infinity: Python's json accepts them, kn_lens not


#: The field under which each stored line keeps the checksum of the rest of its record.
CHECKSUM_FIELD = "_sha256"


def record_checksum(record: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``record`` as canonical JSON (sorted keys, no
    spaces): what :meth:`JsonlStore.append` stores beside it and every read checks."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _parse(line: bytes, path: Path, n: int) -> Record | None:
    """The record of line ``n``; ``None`` when the line is not JSON (torn). A line with a
    non-finite number is no torn write (kn_lens never writes one): :class:`StoreError`; so is
    a line whose content no longer matches its checksum (changed by hand). Lines written before
    kn_lens kept checksums have none and are read as they are."""
    try:
        rec = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
    except _NonFinite as e:
        raise StoreError(
            f"{path}:{n}: holds the number {e}, which is not finite; kn_lens never stores one, so "
            "the file was changed by hand or is corrupt: delete that line and run the step again "
            "to recompute it"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict):
        raise StoreError(f"{path}:{n}: expected a JSON object per line")
    if CHECKSUM_FIELD in rec:
        stored = rec.pop(CHECKSUM_FIELD)
        if stored != record_checksum(rec):
            raise StoreError(
                f"{path}:{n}: the record was changed after kn_lens wrote it (its checksum does "
                "not match its content): delete that line and run the step again to recompute it"
            )
    out = Record(rec)
    out.source = f"{path}:{n}"
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a store file, ignoring a torn last line (one without its newline, or one
    that does not parse). A bad line *before* the last, or any line holding a non-finite number
    (``NaN``, ``Infinity``), raises :class:`StoreError` naming the file and line. Each record is a
    :class:`Record` (a ``dict``) whose ``source`` is ``"FILE:LINE"``."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines, end = _split_complete(data)
    if end < len(data):
        log.warning(
            "%s: ignoring a torn last line (%d bytes) left by an interrupted run",
            path,
            len(data) - end,
        )
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rec = _parse(line, path, n)
        if rec is None:
            if n == len(lines) and end == len(data):
                log.warning("%s:%d: ignoring an unreadable last line", path, n)
                break
            raise StoreError(
                f"{path}:{n}: not valid JSON; the file is corrupt "
                "(only a torn last line can be repaired)"
            )
        out.append(rec)
    return out


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn last line away (in place). Returns the number of bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines, end = _split_complete(data)
    # A complete but unreadable last line is torn too (it cannot come from a whole write).
    if (
        lines
        and end == len(data)
        and lines[-1].strip()
        and _parse(lines[-1], path, len(lines)) is None
    ):
        end -= len(lines[-1]) + 1
    removed = len(data) - end
    if removed:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "%s: removed a torn last line (%d bytes) left by an interrupted run", path, removed
        )
    return removed


def _where(rec: dict[str, Any], path: str | Path) -> str:
    """``"FILE:LINE"`` of a record read by :func:`read_jsonl`, else the file."""
    return getattr(rec, "source", "") or str(path)


def read_union(
    paths: Iterable[str | Path],
    key: str = "key",
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Records of several files (e.g. all shards of a relation) by ``record[key]``.

    With ``keep``, records it refuses (stale ones, computed from other inputs) are passed over as
    if absent. Each key is kept once (the first seen, files in the given order); duplicates, which
    only arise when the same facts were run under two shard layouts at once, are logged and
    dropped.
    """
    out: dict[str, dict[str, Any]] = {}
    dupes = 0
    for p in paths:
        for rec in read_jsonl(p):
            k = rec.get(key)
            if not isinstance(k, str):
                raise StoreError(f"{_where(rec, p)}: record without a string {key!r} field")
            if keep is not None and not keep(rec):
                continue
            if k in out:
                dupes += 1
                continue
            out[k] = rec
    if dupes:
        log.warning("dropped %d duplicate record(s) while reading %s", dupes, key)
    return out


def stored_keys(
    paths: Iterable[str | Path],
    key: str = "key",
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> set[str]:
    """The keys present in any of ``paths`` (of the records ``keep`` accepts). A key may have
    several records (e.g. a stale one and the one that replaced it): it counts once, silently."""
    keys: set[str] = set()
    for p in paths:
        for rec in read_jsonl(p):
            k = rec.get(key)
            if not isinstance(k, str):
                raise StoreError(f"{_where(rec, p)}: record without a string {key!r} field")
            if keep is None or keep(rec):
                keys.add(k)
    return keys


class JsonlStore:
    """An append-only JSON-lines file of keyed records, safe to kill at any moment.

    Use as a context manager::

        with JsonlStore(out / "P19.jsonl", done=stored_keys(relation_files(out, "P19"))) as st:
            for bag in bags:
                if bag.key not in st:
                    st.append({"key": bag.key, ...})

    Opening repairs a torn last line, takes an exclusive advisory lock (a second process appending
    to the same file gets :class:`StoreError`) and reads the keys already present. ``append`` writes
    the whole line, then ``fsync``; appending a key already present raises ``StoreError``. With
    ``keep``, a stored record it refuses (a stale one) does not count as present, so its key may
    be appended again; readers pass ``keep`` too and see only the new record.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        key: str = "key",
        done: Iterable[str] = (),
        fsync: bool = True,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.keep = keep
        self.fsync = fsync
        self._extra_done = set(done)
        self._keys: set[str] = set()
        self._fd: int | None = None

    def open(self) -> JsonlStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StoreError(
                    f"{self.path} is being written by another process "
                    "(is the same --shard running twice?)"
                ) from None
        self._fd = fd
        repair_jsonl(self.path)  # safe: we hold the lock
        self._keys = set(read_union([self.path], self.key, self.keep)) | self._extra_done
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> JsonlStore:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __contains__(self, k: object) -> bool:
        return k in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> set[str]:
        return set(self._keys)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line, then flush it to disk. A write that fails (a full
        disk) leaves the file as it was before, and raises :class:`StoreError` naming it."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: store is not open")
        k = record.get(self.key)
        if not isinstance(k, str):
            raise StoreError(f"record needs a string {self.key!r} field, got {k!r}")
        if k in self._keys:
            raise StoreError(f"{self.path}: key {k!r} is already stored")
        if CHECKSUM_FIELD in record:
            raise StoreError(f"record of {k!r}: {CHECKSUM_FIELD!r} is the store's own field")
        line = {**record, CHECKSUM_FIELD: record_checksum(record)}
        data = (json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n").encode()
        if b"\n" in data[:-1]:  # json.dumps never emits raw newlines; guard anyway
            raise ValueError("a record must serialise to one line")
        start = os.fstat(self._fd).st_size  # we hold the lock: nobody else appends
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            # A full disk (or a quota) can stop a write halfway: cut the partial line away now,
            # so that no later append joins it into a corrupt middle line.
            cut = ""
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                cut = " (its torn last line is cut away when the file is next opened)"
            raise StoreError(
                f"{self.path}: could not store the record of {k!r}: {e.strerror or e}; the "
                f"records before it are kept{cut}: free some space and run the step again"
            ) from e
        self._keys.add(k)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_jsonl(self.path))


class FactLogFile:
    """A resumable analysis' per-fact records in one JSON-lines file (a
    :class:`kn_lens.experiments.registry.FactLog`), safe to kill at any moment.

    Each line is a record with ``key`` and ``fingerprint``; it is stored under the id
    ``"KEY@FINGERPRINT"``, so a fact recomputed after its inputs changed gets a new line and the
    old one is never read again, and no id is ever written twice (a second process appending to
    the same file gets :class:`StoreError`). Use as a context manager.
    """

    def __init__(self, path: str | Path) -> None:
        self._store = JsonlStore(path, key="id")
        self._records: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _id(key: str, fingerprint: str) -> str:
        return f"{key}@{fingerprint}"

    def open(self) -> FactLogFile:
        self._store.open()
        self._records = read_union([self._store.path], key="id")
        return self

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> FactLogFile:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        """The record of ``key`` computed with ``fingerprint``, if stored."""
        return self._records.get(self._id(key, fingerprint))

    def append(self, record: Any) -> None:
        """Store ``record`` (a mapping with string ``key`` and ``fingerprint``) as one line,
        flushed to disk before this returns."""
        key, fp = record.get("key"), record.get("fingerprint")
        if not isinstance(key, str) or not isinstance(fp, str):
            raise StoreError(
                f"{self._store.path}: a record needs string 'key' and 'fingerprint' fields"
            )
        rec = {"id": self._id(key, fp), **record}
        self._store.append(rec)
        self._records[rec["id"]] = rec


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a uniquely named temporary file and an atomic rename.

    Safe when several processes (shards) write the same file at once: each writes its own
    temporary file, and the last rename wins with a whole file. A failed write (a full disk)
    leaves the previous file, or none, never a truncated one, and raises :class:`StoreError`
    naming ``path``.
    """
    import tempfile

    from kn_lens.results import to_jsonable

    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=2)  # a bad value fails here, before any file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StoreError(f"{path}: could not write it: {e.strerror or e}") from e
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary result files
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # e.g. a full disk: the old file (or none) is left, whole
            old = "its previous version is kept" if path.exists() else "it was not created"
            raise StoreError(
                f"{path}: could not write it: {e.strerror or e}; {old}: free some space and "
                "run the step again"
            ) from e
        raise
