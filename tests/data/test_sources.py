"""Where a run's facts come from (kn_lens.data.sources): each source, and errors naming the option
and the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens.data import DataError, default_facts
from kn_lens.data.sources import check_source, load_facts, load_templates, load_web, web_folder
from kn_lens.data.web import default_web_facts


def _facts_file(path: Path) -> Path:
    rows = [
        {"subject": "Ada", "relation": "r1", "object": "Bergen", "templates": ["[X] in [Y] ."]},
        {"subject": "Bo", "relation": "r2", "object": "Oslo", "templates": ["[X] at [Y] ."]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_default_source_is_the_built_in_world():
    bags = load_facts("default")
    assert bags == default_facts()
    rel = bags[0].relation
    assert {b.relation for b in load_facts("default", relations=[rel])} == {rel}
    with pytest.raises(DataError, match=r"unknown relation\(s\) P0 in the built-in fact world"):
        load_facts("default", relations=["P0"])


def test_jsonl_source_and_its_relations(tmp_path: Path):
    p = _facts_file(tmp_path / "facts.jsonl")
    assert [b.key for b in load_facts(str(p))] == ["r1/0", "r2/0"]
    assert [b.key for b in load_facts(str(p), relations=["r2"])] == ["r2/0"]
    with pytest.raises(DataError, match=rf"unknown relation\(s\) r3 in {p}; available: r1, r2"):
        load_facts(str(p), relations=["r3"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("nowhere.jsonl", None, None, None), r"--data nowhere\.jsonl: no such file or folder"),
        (("default", "nolama", None, None), r"--lama nolama: no such folder"),
        (("default", None, None, "noweb"), r"--web noweb: no such folder"),
    ],
)
def test_missing_paths_name_the_option(tmp_path: Path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=match):
        check_source(*args)


def test_lama_without_patterns_is_refused(tmp_path: Path):
    (tmp_path / "lama").mkdir()
    with pytest.raises(DataError, match="give both --lama DIR and --patterns DIR"):
        check_source("default", str(tmp_path / "lama"), None, None)


def test_root_without_lama_names_the_folder(tmp_path: Path):
    with pytest.raises(DataError, match=rf"data folder not found: {tmp_path / 'lama'}"):
        load_facts(str(tmp_path))


def test_web_folder_and_sentences(tmp_path: Path):
    assert web_folder("default", None) is None
    assert web_folder("default", str(tmp_path)) == tmp_path
    (tmp_path / "bing_distant").mkdir()
    assert web_folder(str(tmp_path), None) == tmp_path / "bing_distant"
    assert load_web("default", None, None, None, ["P19"]) == default_web_facts()
    p = _facts_file(tmp_path / "facts.jsonl")
    with pytest.raises(DataError, match="web sentences are needed: give --web DIR"):
        load_web(str(p), None, None, None, ["r1"])
    (tmp_path / "final_distant_allbags_P19_new.json").write_text("[]")
    with pytest.raises(
        DataError, match=r"no web sentences in .* for the selected relation\(s\) r1"
    ):
        load_web(str(p), None, None, str(tmp_path), ["r1"])


def test_templates_of_relations_whose_facts_are_not_selected(shared_data: Path, tmp_path: Path):
    """update's symmetry reads the inverse relation's PARAREL templates, whatever the selection."""
    root = str(shared_data)
    temps = load_templates(root, None, None, ["P1376", "P9999"])
    assert temps is not None and list(temps) == ["P1376"]  # no patterns file: left out
    assert len(temps["P1376"]) == 14 and temps["P1376"][0] == "[X] is the capital of [Y]."
    lama, pats = str(shared_data / "lama"), str(shared_data / "pararel" / "patterns")
    assert load_templates("default", lama, pats, ["P1376"]) == temps
    # the built-in world and a facts file have no templates
    assert load_templates("default", None, None, ["P1376"]) is None
    assert load_templates(str(_facts_file(tmp_path / "f.jsonl")), None, None, ["r1"]) is None
    with pytest.raises(DataError, match="no such file or folder"):
        load_templates(str(tmp_path / "nowhere"), None, None, ["P1376"])
