"""The PARAREL / LAMA T-REx loader: the paper's counts on the shared data, and bad input named by
file and line on a tiny folder written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens.data import DataError, load_pararel, load_patterns, load_relations


def test_pararel_counts(shared_data: Path):
    """On the shared data: the paper's 34 relations, 27,738 bags, 253,448 prompts."""
    bags = load_pararel(shared_data / "lama", shared_data / "pararel" / "patterns")
    assert len({b.relation for b in bags}) == 34
    assert len(bags) == 27_738
    assert sum(len(b.prompts) for b in bags) == 253_448
    # T-REx file order is kept, so bag.index is the line's rank in its relation file.
    first = [
        json.loads(line)
        for line in (shared_data / "lama" / "TREx" / "P19.jsonl").read_text().splitlines()[:3]
    ]
    p19 = [b for b in bags if b.relation == "P19"][:3]
    assert [(b.subject, b.object, b.index) for b in p19] == [
        (r["sub_label"], r["obj_label"], i) for i, r in enumerate(first)
    ]
    assert p19[0].relation_type == "N-1" and p19[0].relation_label == "place of birth"
    assert all(p.count("[MASK]") == 1 and p19[0].subject in p for p in p19[0].prompts)


def test_pararel_relation_selection(shared_data: Path):
    bags = load_pararel(
        shared_data / "lama", shared_data / "pararel" / "patterns", relations=["P19", "P106"]
    )
    assert {b.relation for b in bags} == {"P19", "P106"}
    with pytest.raises(ValueError, match="unknown relation.*P9999"):
        load_pararel(
            shared_data / "lama", shared_data / "pararel" / "patterns", relations=["P9999"]
        )


def test_pararel_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        load_pararel(tmp_path / "lama", tmp_path / "patterns")


PATTERNS = [
    "[X] was born in [Y] .",
    "[X] is from [Y] .",
    "[X] came from [Y] .",
    "[Y] is home to [X] .",
]


def _tiny(root: Path, patterns: list[str] = PATTERNS, subject: str = "Zelvik") -> Path:
    """A LAMA/PARAREL folder with one relation (P19), two facts and ``patterns``."""
    (root / "lama" / "TREx").mkdir(parents=True)
    (root / "patterns").mkdir()
    rel = {"relation": "P19", "label": "place of birth", "type": "N-1"}
    (root / "lama" / "relations.jsonl").write_text(json.dumps(rel) + "\n")
    facts = [{"sub_label": "Ada", "obj_label": "Bergen"}, {"sub_label": subject, "obj_label": "X"}]
    (root / "lama" / "TREx" / "P19.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    (root / "patterns" / "P19.jsonl").write_text(
        "".join(json.dumps({"pattern": p}) + "\n" for p in patterns)
    )
    return root


def test_tiny_folder_loads(tmp_path: Path):
    root = _tiny(tmp_path)
    bags = load_pararel(root / "lama", root / "patterns")
    assert [(b.key, b.subject, b.object) for b in bags] == [
        ("P19/0", "Ada", "Bergen"),
        ("P19/1", "Zelvik", "X"),
    ]
    assert bags[0].prompts[0] == "Ada was born in [MASK] ." and len(bags[0].prompts) == 4


def test_pattern_with_y_twice_names_file_and_line(tmp_path: Path):
    root = _tiny(tmp_path, [*PATTERNS[:2], "[X] and [Y] and [Y] .", PATTERNS[3]])
    with pytest.raises(DataError) as err:
        load_pararel(root / "lama", root / "patterns")
    path = root / "patterns" / "P19.jsonl"
    assert str(err.value).startswith(f"{path}, line 3: template must contain [Y] exactly once")


def test_pattern_with_mask_names_file_and_line(tmp_path: Path):
    root = _tiny(tmp_path, [*PATTERNS[:3], "[X] [MASK] [Y] ."])
    with pytest.raises(DataError, match=r"P19\.jsonl, line 4: template must not contain \[MASK\]"):
        load_patterns(root / "patterns" / "P19.jsonl")


def test_subject_with_mask_names_the_trex_file_and_line(tmp_path: Path):
    root = _tiny(tmp_path, subject="the [MASK] man")
    with pytest.raises(DataError) as err:
        load_pararel(root / "lama", root / "patterns")
    path = root / "lama" / "TREx" / "P19.jsonl"
    assert str(err.value) == f"{path}, line 2: subject must not contain [MASK]: 'the [MASK] man'"


def test_bom_and_bad_bytes_in_lama_files(tmp_path: Path):
    root = _tiny(tmp_path)
    rel_file = root / "lama" / "relations.jsonl"
    rel_file.write_bytes(b"\xef\xbb\xbf" + rel_file.read_bytes())
    assert load_relations(root / "lama")["P19"]["label"] == "place of birth"
    trex = root / "lama" / "TREx" / "P19.jsonl"
    trex.write_bytes(trex.read_bytes().replace(b"Zelvik", b"Z\xe9lvik"))
    with pytest.raises(
        DataError, match=r"P19\.jsonl, line 2: not UTF-8 \(byte 0xe9 at byte offset"
    ):
        load_pararel(root / "lama", root / "patterns")


def test_unknown_relation_type_names_file_and_line(tmp_path: Path):
    root = _tiny(tmp_path)
    (root / "lama" / "relations.jsonl").write_text('\n{"relation": "P19", "type": "1-N"}\n')
    with pytest.raises(DataError, match=r"relations\.jsonl, line 2: unknown relation type '1-N'"):
        load_relations(root / "lama")
