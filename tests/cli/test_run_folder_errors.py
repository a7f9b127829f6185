"""Bad run-folder files and inputs are one-line errors naming the file and the key (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.helpers import _assert_clean_error, base_args, main_fake, write_facts


@pytest.fixture
def folder(tmp_path, tiny_ckpt) -> Path:
    out = tmp_path / "o"
    facts = write_facts(tmp_path / "f.jsonl", per_relation=1)
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out)]) == 0
    return out


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("relations", "P19", "options.relations must be list of strings or null"),
        ("max_bags", "2", "options.max_bags"),
        ("steps", 0, "options.steps must be a positive integer"),
        ("model", ["x"], "options.model"),
    ],
)
def test_a_wrong_type_in_run_json_names_the_file_and_key(folder, capsys, key, value, needle):
    doc = json.loads((folder / "run.json").read_text())
    doc["options"][key] = value
    (folder / "run.json").write_text(json.dumps(doc))
    rc = main_fake(["attribute", "--out", str(folder), "-q"])
    assert rc == 2
    _assert_clean_error(capsys, rc, str(folder / "run.json"), needle)


def test_a_truncated_run_json_is_an_error_not_ignored(folder, capsys):
    text = (folder / "run.json").read_text()
    (folder / "run.json").write_text(text[: len(text) // 2])
    rc = main_fake(["attribute", "--out", str(folder), "-q"])
    assert rc == 2
    _assert_clean_error(capsys, rc, str(folder / "run.json"), "unreadable")


def test_an_empty_facts_file_is_named(tmp_path, tiny_ckpt, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    rc = main_fake(["attribute", *base_args(tiny_ckpt, empty, tmp_path / "o")])
    assert rc == 2
    _assert_clean_error(capsys, rc, str(empty), "holds no facts")


def test_two_relations_sharing_a_store_file_are_named(tmp_path, tiny_ckpt, capsys):
    from kn_lens.store import safe_name

    crafted = safe_name("P 19")  # "P_19-<hash>": a plain id equal to another's file name
    lines = [
        {"subject": s, "relation": r, "object": "Paris", "templates": ["[X] was born in [Y] ."]}
        for s, r in (("Alice", "P 19"), ("Bob", crafted))
    ]
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rc = main_fake(["attribute", *base_args(tiny_ckpt, facts, tmp_path / "o")])
    assert rc == 2
    _assert_clean_error(capsys, rc, "'P 19'", repr(crafted), "share the store file")


def test_relations_equal_but_for_case_are_refused(tmp_path):
    from kn_lens.store import StoreError, check_store_names

    check_store_names(["P19", "P37"], tmp_path)
    with pytest.raises(StoreError, match="'P19' and 'p19'"):
        check_store_names(["P19", "p19"], tmp_path)


@pytest.mark.parametrize("value", [",", " ", ", ,"])
def test_relations_without_any_id_are_refused_not_read_as_all(tmp_path, value, capsys):
    rc = main_fake(["attribute", "--relations", value, "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2
    _assert_clean_error(capsys, rc, "--relations", "no relation id")
    assert not (tmp_path / "o").exists()
