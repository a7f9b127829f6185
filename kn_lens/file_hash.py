"""Content hashes of files, cached so a large weight file is read once, not on every run.

:func:`file_sha256` hashes a file's bytes (SHA-256). The result is cached in a small JSON file
(:func:`hash_cache_path`: ``$KN_LENS_CACHE/file_hashes.json``, else
``$XDG_CACHE_HOME/kn_lens/file_hashes.json``, else ``~/.cache/kn_lens/file_hashes.json``), keyed
by the file's resolved path, device, inode, size, modification time and status-change time
(``st_ctime_ns``). Any write to the file changes its status-change time, which a program cannot
set back, so a file changed in place is hashed again; an unchanged file is not read. A cache that
cannot be read or written is ignored (the file is hashed every time).

:func:`files_digest` combines named files into one hash: the names and the content hashes,
not the paths, so the same files in another folder give the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from kn_lens.errors import KnLensError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class FileHashError(KnLensError):
    """A file to hash cannot be read; the message names it."""


def hash_cache_path() -> Path:
    """Where the hash cache lives (see the module's docstring)."""
    root = os.environ.get("KN_LENS_CACHE")
    if root:
        return Path(root).expanduser() / "file_hashes.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kn_lens" / "file_hashes.json"


def _stat_key(path: Path) -> tuple[str, str]:
    st = path.stat()
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return str(path), ident


def _read_cache(cache: Path) -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_cache(cache: Path, doc: Mapping[str, object]) -> None:
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as e:  # a read-only home, a full disk: hash again next time
        log.debug("could not write the hash cache %s (%s)", cache, e)
        try:
            tmp.unlink()
        except OSError:
            pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path, *, cache: bool = True) -> str:
    """The SHA-256 of ``path``'s bytes (hex), from the cache when the file is unchanged since.

    Raises:
        FileHashError: the file cannot be read (the message names it).
    """
    path = Path(path).expanduser().resolve()
    try:
        name, ident = _stat_key(path)
        store = hash_cache_path() if cache else None
        doc = _read_cache(store) if store is not None else {}
        hit = doc.get(name)
        if (
            isinstance(hit, dict)
            and hit.get("stat") == ident
            and isinstance(hit.get("sha256"), str)
        ):
            return hit["sha256"]
        digest = _sha256(path)
        if _stat_key(path)[1] != ident:  # changed while it was read: do not cache a mix
            return digest
    except OSError as e:
        raise FileHashError(f"{path}: cannot read it to hash it ({e.strerror or e})") from None
    if store is not None:
        doc = _read_cache(store)  # re-read: another process may have added entries meanwhile
        doc[name] = {"stat": ident, "sha256": digest}
        _write_cache(store, doc)
    return digest


def files_digest(files: Mapping[str, str | Path], *, cache: bool = True) -> str:
    """One SHA-256 over ``{name: file}``: each name with its file's content hash, in name order.
    Equal digests mean equal names and equal bytes."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{file_sha256(files[name], cache=cache)}\n".encode())
    return h.hexdigest()
