"""One run at a time on a run folder: an advisory lock file, ``DIR/.kn-lens.lock``.

A step that writes the folder's shared files (``run.json``, ``neurons.json``, ``results.json``,
the report) holds the lock exclusively, so two runs at once into one folder cannot overwrite each
other's results: the second one stops at once with a one-line error that names the folder and the
process holding it. Shards of ``attribute`` (``--shard K/N``) share it, so they still run side by
side (each writes its own store files), but never beside an exclusive step.

The lock is ``fcntl.flock`` on the lock file: the system drops it when its process ends, so a
killed run leaves no stale lock. Each holder writes one line, ``PID COMMAND``, into the file for
the error message of whoever waits. Where ``fcntl`` is missing (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from kn_lens.errors import KnLensError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".kn-lens.lock"


class FolderBusyError(KnLensError):
    """Another kn-lens run holds the run folder (exit status 2); the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def holders(path: Path) -> list[str]:
    """``"PID COMMAND"`` of the live processes the lock file names (the latest first)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in reversed(lines):
        pid, _, what = line.strip().partition(" ")
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            out.append(f"pid {pid}: {what}" if what else f"pid {pid}")
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, *, shared: bool = False) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs (``shared``: beside other shared holders
    only). ``what`` (the command) is recorded for others' error messages.

    Raises:
        FolderBusyError: another process holds it (the message names the folder and the pid).
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holders(path)
            raise FolderBusyError(
                f"{folder} is in use by another kn-lens run"
                + (f" ({'; '.join(who)})" if who else "")
                + ": wait for it to finish, or use another --out"
            ) from None
        if not shared:
            f.truncate(0)
        f.write(f"{os.getpid()} {' '.join(what.split())}\n")
        f.flush()
        try:
            yield
        finally:
            if not shared:
                f.truncate(0)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()
