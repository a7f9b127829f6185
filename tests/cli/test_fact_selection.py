"""--facts KEYS_FILE and --max-prompts N: choosing the facts and prompts of a run."""

from __future__ import annotations

import json

from .helpers import _assert_clean_error, all_keys, base_args, main_fake, read_jsonl, write_facts


def test_facts_file_and_max_prompts_select_exactly(tmp_path, tiny_ckpt):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=4)
    keys = tmp_path / "keys.txt"
    keys.write_text("# the study's facts\nP19/1\nP37/3  # a comment\n\nP106/0\n")
    out = tmp_path / "o"
    args = base_args(tiny_ckpt, facts, out, "--facts", str(keys), "--max-prompts", "2")
    assert main_fake(["attribute", *args]) == 0
    assert sorted(all_keys(out)) == ["P106/0", "P19/1", "P37/3"]
    for f in (out / "attribution").glob("*.jsonl"):
        assert all(r["n_prompts"] == 2 for r in read_jsonl(f))
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["facts"] == str(keys) and run["options"]["max_prompts"] == 2
    # the same selection again: nothing new to score, the same prompts (seeded)
    assert main_fake(["attribute", *args]) == 0
    assert sorted(all_keys(out)) == ["P106/0", "P19/1", "P37/3"]


def test_bad_facts_file_is_named(tmp_path, tiny_ckpt, capsys):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=2)
    bad = tmp_path / "bad.txt"
    bad.write_text("P19/0\nnot a key\n")
    rc = main_fake(["attribute", *base_args(tiny_ckpt, facts, tmp_path / "o", "--facts", str(bad))])
    _assert_clean_error(capsys, rc, "bad.txt:2", "not a key")
    missing = tmp_path / "missing.txt"
    missing.write_text("P19/0\nP19/99\n")
    rc = main_fake(
        ["attribute", *base_args(tiny_ckpt, facts, tmp_path / "o2", "--facts", str(missing))]
    )
    _assert_clean_error(capsys, rc, "P19/99")
