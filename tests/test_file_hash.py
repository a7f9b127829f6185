"""Content hashes of files, cached by the file's identity and status-change time."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from kn_lens.errors import KnLensError
from kn_lens.file_hash import file_sha256, files_digest, hash_cache_path


def test_hash_is_the_content_hash_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_LENS_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    cache = json.loads(hash_cache_path().read_text())
    assert cache[str(f.resolve())]["sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()

    # A cached entry is used while the file is unchanged: a planted value comes back.
    entry = cache[str(f.resolve())]
    cache[str(f.resolve())] = {**entry, "sha256": "planted"}
    hash_cache_path().write_text(json.dumps(cache))
    assert file_sha256(f) == "planted"


def test_a_file_changed_in_place_is_hashed_again(tmp_path, monkeypatch):
    """Same size, modification time set back: the status-change time still moves."""
    monkeypatch.setenv("KN_LENS_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"\x00" * 4096)
    first = file_sha256(f)
    st = f.stat()
    with open(f, "r+b") as fh:  # flip one byte in place
        fh.seek(100)
        fh.write(b"\x01")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    second = file_sha256(f)
    assert second != first
    assert second == hashlib.sha256(f.read_bytes()).hexdigest()


def test_an_unwritable_cache_is_ignored(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("KN_LENS_CACHE", str(blocker))
    f = tmp_path / "w.bin"
    f.write_bytes(b"w")
    assert file_sha256(f) == hashlib.sha256(b"w").hexdigest()


def test_digest_depends_on_names_and_bytes_not_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights")
    digest = files_digest({p.name: p for p in a.iterdir()})
    assert digest == files_digest({p.name: p for p in b.iterdir()})
    (b / "model.safetensors").write_bytes(b"weightz")
    assert digest != files_digest({p.name: p for p in b.iterdir()})


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(KnLensError, match="nope.bin"):
        file_sha256(tmp_path / "nope.bin")
