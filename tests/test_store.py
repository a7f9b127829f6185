"""The crash-safe JSON-lines store: torn lines, resume, shards, locking."""

from __future__ import annotations

import json

import pytest

from kn_lens.store import (
    FactLogFile,
    JsonlStore,
    Shard,
    StoreError,
    read_jsonl,
    read_union,
    relation_files,
    repair_jsonl,
    safe_name,
    stored_keys,
)


def test_shard_parse_and_ownership():
    s = Shard.parse("2/3")
    assert (s.k, s.n) == (2, 3)
    assert [i for i in range(9) if s.owns(i)] == [1, 4, 7]
    assert s.suffix == ".shard2of3" and Shard().suffix == ""
    # Shards partition the facts.
    items = list(range(10))
    parts = [Shard(k, 3).select(items) for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == items
    for bad in ("3/2", "0/2", "1/0", "a/b", "1", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


def test_safe_name_is_injective_and_plain():
    assert safe_name("P19") == "P19"
    a, b = safe_name("a/b"), safe_name("a_b")
    assert a != b and "/" not in a


def test_append_read_and_resume(tmp_path):
    path = tmp_path / "P19.jsonl"
    with JsonlStore(path) as st:
        st.append({"key": "P19/0", "v": 1})
        st.append({"key": "P19/1", "v": 2})
        with pytest.raises(ValueError, match="already stored"):
            st.append({"key": "P19/0", "v": 3})
        with pytest.raises(ValueError, match="key"):
            st.append({"v": 3})
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0", "P19/1"]
    with JsonlStore(path) as st:  # reopened: keys are known
        assert "P19/1" in st and len(st) == 2
        st.append({"key": "P19/2", "v": 3})
    assert path.read_text().count("\n") == 3


def test_torn_last_line_ignored_by_readers_and_repaired_on_open(tmp_path):
    path = tmp_path / "P19.jsonl"
    path.write_text(json.dumps({"key": "P19/0"}) + "\n" + '{"key": "P19/1", "v": [1, 2')
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0"]
    with JsonlStore(path) as st:
        assert st.keys == {"P19/0"}
        st.append({"key": "P19/1", "v": [1, 2]})
    recs = read_jsonl(path)
    assert [r["key"] for r in recs] == ["P19/0", "P19/1"] and recs[1]["v"] == [1, 2]
    assert path.read_bytes().endswith(b"\n")


def test_unreadable_complete_last_line_is_repaired(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"key": "a"}\n{"key": \n')
    assert [r["key"] for r in read_jsonl(path)] == ["a"]
    assert repair_jsonl(path) == len('{"key": \n')
    assert path.read_text() == '{"key": "a"}\n'


def test_corruption_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(StoreError, match=r"x.jsonl:2"):
        read_jsonl(path)


def test_shard_files_union_and_exactly_once(tmp_path):
    for k in (1, 2):
        with JsonlStore(tmp_path / f"P19{Shard(k, 2).suffix}.jsonl") as st:
            for i in Shard(k, 2).select(range(5)):
                st.append({"key": f"P19/{i}"})
    (tmp_path / "P190.jsonl").write_text('{"key": "P190/0"}\n')  # another relation, not matched
    files = relation_files(tmp_path, "P19")
    assert [f.name for f in files] == ["P19.shard1of2.jsonl", "P19.shard2of2.jsonl"]
    assert sorted(read_union(files)) == [f"P19/{i}" for i in range(5)]
    # An unsharded rerun sees everything as done.
    with JsonlStore(tmp_path / "P19.jsonl", done=stored_keys(files)) as st:
        assert all(f"P19/{i}" in st for i in range(5))


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "P19.jsonl"
    with JsonlStore(path):
        with pytest.raises(StoreError, match="another process"):
            JsonlStore(path).open()


def test_fact_log_keeps_records_by_key_and_fingerprint(tmp_path):
    path = tmp_path / "localize_facts.jsonl"
    with FactLogFile(path) as log:
        assert len(log) == 0 and log.get("P19/0", "aa") is None
        log.append({"key": "P19/0", "fingerprint": "aa", "fact": {"x": 1.5}})
        log.append({"key": "P19/1", "fingerprint": "aa", "fact": {"x": 2}})
        with pytest.raises(StoreError, match="already stored"):
            log.append({"key": "P19/0", "fingerprint": "aa", "fact": {"x": 3}})
        with pytest.raises(StoreError, match="fingerprint"):
            log.append({"key": "P19/2", "fact": {}})
        with pytest.raises(StoreError, match="another process"):
            FactLogFile(path).open()
    with open(path, "ab") as f:  # a kill mid-write
        f.write(b'{"id": "P19/2@aa", "key": "P19/2", "fact": {"x":')
    with FactLogFile(path) as log:  # repaired; the inputs of P19/0 changed: a new record
        assert len(log) == 2 and log.get("P19/0", "aa")["fact"] == {"x": 1.5}
        assert log.get("P19/0", "bb") is None and log.get("P19/2", "aa") is None
        log.append({"key": "P19/0", "fingerprint": "bb", "fact": {"x": 4}})
    with FactLogFile(path) as log:
        assert log.get("P19/0", "bb")["fact"] == {"x": 4} and len(log) == 3
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == 3
