"""Facts, bags, the user JSON-lines loader and the single-token filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens.data import DataError, Fact, FactBag, check_prompt, load_jsonl_facts
from kn_lens.prompts import filter_single_token


def test_check_prompt_names_the_prompt():
    assert check_prompt("x [MASK] y") == "x [MASK] y"
    with pytest.raises(ValueError, match="found 0: 'no mask here'"):
        check_prompt("no mask here")
    with pytest.raises(ValueError, match="found 2"):
        check_prompt("[MASK] and [MASK]")


def test_bag_rejects_bad_prompts_and_round_trips():
    fact = Fact("Alice", "R1", "born in", "N-1", "Paris")
    bag = FactBag(fact, ("Alice was born in [MASK] .",), index=4)
    assert bag.key == "R1/4" and bag.object == "Paris" and bag.relation_type == "N-1"
    assert FactBag.from_dict(json.loads(json.dumps(bag.to_dict()))) == bag
    with pytest.raises(ValueError, match="Alice was born"):
        FactBag(fact, ("Alice was born in Paris .",))


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_user_jsonl_facts(tmp_path: Path):
    p = _write(
        tmp_path / "facts.jsonl",
        [
            {
                "subject": "Alice",
                "relation": "born",
                "object": "Paris",
                "templates": ["[X] was born in [Y] .", "[X] is from [Y] ."],
            },
            "",
            {
                "subject": "Bob",
                "relation": "born",
                "object": "London",
                "relation_type": "N-1",
                "templates": ["[X] was born in [Y] ."],
            },
        ],
    )
    bags = load_jsonl_facts(p)
    assert [b.key for b in bags] == ["born/0", "born/1"]
    assert bags[0].prompts == ("Alice was born in [MASK] .", "Alice is from [MASK] .")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"subject": "A", "relation": "r", "templates": ["[X] [Y]"]}', "line 2: missing .*object"),
        (
            '{"subject": "A", "relation": "r", "object": "B", "templates": "[X] [Y]"}',
            "line 2: 'templates'",
        ),
        (
            '{"subject": "A", "relation": "r", "object": "B", "templates": ["[X] only"]}',
            "line 2: .*\\[Y\\]",
        ),
        ("[1, 2]", "line 2: expected a JSON object"),
        (
            '{"subject": "A", "relation": "r", "object": "B", "templates": ["[X] [Y] or [Y]"]}',
            "line 2: template must contain \\[Y\\] exactly once, found 2",
        ),
        (
            '{"subject": "A", "relation": "r", "object": "B", "templates": ["[X] [MASK] [Y]"]}',
            "line 2: template must not contain \\[MASK\\]",
        ),
        (
            '{"subject": "A [MASK]", "relation": "r", "object": "B", "templates": ["[X] [Y]"]}',
            "line 2: subject must not contain \\[MASK\\]: 'A \\[MASK\\]'",
        ),
        (
            '{"subject": " ", "relation": "r", "object": "B", "templates": ["[X] [Y]"]}',
            "line 2: blank field\\(s\\) subject",
        ),
        (
            '{"subject": "C", "relation": "r", "relation_label": 5, "object": "B", '
            '"templates": ["[X] [Y]"]}',
            "line 2: 'relation_label' must be a non-blank string",
        ),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, bad: str, message: str):
    good = {"subject": "A", "relation": "r", "object": "B", "templates": ["[X] is [Y] ."]}
    p = _write(tmp_path / "facts.jsonl", [good, bad])
    with pytest.raises(DataError, match=message) as err:
        load_jsonl_facts(p)
    assert "facts.jsonl, line 2" in str(err.value)


def test_non_utf8_bytes_name_file_line_and_byte_offset(tmp_path: Path):
    good = json.dumps({"subject": "A", "relation": "r", "object": "B", "templates": ["[X] [Y]"]})
    p = tmp_path / "facts.jsonl"
    p.write_bytes(good.encode() + b"\n" + b'{"subject": "Z\xe9lvik"}\n')
    with pytest.raises(DataError) as err:
        load_jsonl_facts(p)
    offset = len(good) + 1 + len('{"subject": "Z')
    assert str(err.value) == (
        f"{p}, line 2: not UTF-8 (byte 0xe9 at byte offset {offset} of the file, column 15 of "
        "the line)"
    )


def test_utf8_bom_at_the_start_is_accepted(tmp_path: Path):
    good = {"subject": "Zélvik", "relation": "r", "object": "B", "templates": ["[X] [Y] ."]}
    p = tmp_path / "facts.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(good, ensure_ascii=False).encode() + b"\n")
    (bag,) = load_jsonl_facts(p)
    assert bag.subject == "Zélvik" and bag.prompts == ("Zélvik [MASK] .",)


def test_duplicate_fact_lines_are_logged_and_kept_once(tmp_path: Path, caplog):
    a = {"subject": "A", "relation": "r", "object": "B", "templates": ["[X] [Y] ."]}
    b = {"subject": "C", "relation": "r", "object": "B", "templates": ["[X] [Y] ."]}
    p = _write(tmp_path / "facts.jsonl", [a, b, a])
    with caplog.at_level("WARNING", logger="kn_lens.data.facts"):
        bags = load_jsonl_facts(p)
    assert [(x.subject, x.index) for x in bags] == [("A", 0), ("C", 1)]
    assert f"{p}:3: duplicate of the fact on line 1 (A, r, B): kept once" in caplog.text


def test_bag_check_log_names_each_skipped_fact(tiny_model, caplog):
    bags = [
        FactBag(Fact(f"S{i}", "r", "r", "N-1", "Parisville zzz"), ("x [MASK] .",), index=i)
        for i in range(4)
    ]
    check = filter_single_token(bags, tiny_model.tokenizer)
    with caplog.at_level("INFO", logger="kn_lens.data.facts"):
        check.log(10, limit=3)
    lines = caplog.messages
    assert lines[0] == "skipped 4 of 10 facts the model cannot use"
    assert lines[1].startswith("  skipped r/0 (S0 -> Parisville zzz): answer 'Parisville zzz'")
    assert lines[-1] == "  ... and 1 more not listed" and len(lines) == 5


def test_filter_single_token(tiny_model):
    def fact(obj: str) -> FactBag:
        return FactBag(Fact("Alice", "r", "r", "N-1", obj), ("Alice [MASK] .",))

    bags = [fact("Paris"), fact("Parisville zzz"), fact("London")]
    check = filter_single_token(bags, tiny_model.tokenizer)
    assert [b.object for b in check.kept] == ["Paris", "London"] and check.n_skipped == 1
    assert "Parisville zzz" in check.skipped[0][1]
    with pytest.raises(ValueError, match="fact r/0 .*'Parisville zzz'"):
        filter_single_token(bags, tiny_model.tokenizer, on_error="raise")


def test_repeated_template_in_a_line_is_logged_and_kept_once(tmp_path: Path, caplog):
    rec = {"subject": "A", "relation": "r", "object": "B", "templates": ["[X] [Y] .", "[X] [Y] ."]}
    p = _write(tmp_path / "facts.jsonl", [rec])
    with caplog.at_level("WARNING", logger="kn_lens.data.facts"):
        (bag,) = load_jsonl_facts(p)
    assert bag.prompts == ("A [MASK] .",)
    assert f"{p}:1: 1 repeated template(s) kept once" in caplog.text


def test_relation_label_and_type_apply_to_all_lines_and_must_agree(tmp_path: Path):
    def rec(subject: str, **extra: str) -> dict[str, object]:
        base = {"subject": subject, "relation": "r", "object": "B", "templates": ["[X] [Y]"]}
        return {**base, **extra}

    p = _write(tmp_path / "facts.jsonl", [rec("A"), rec("C", relation_type="1-1")])
    assert [b.relation_type for b in load_jsonl_facts(p)] == ["1-1", "1-1"]
    rows = [rec("A", relation_label="born in"), rec("C"), rec("D", relation_label="lives in")]
    p = _write(tmp_path / "facts.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_jsonl_facts(p)
    assert str(err.value) == (
        f"{p}, line 3: relation 'r' has relation_label 'lives in' here but 'born in' on line 1"
    )
