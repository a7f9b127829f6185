"""A run folder never mixes inputs: stored scores and neurons carry their fact's fingerprint.

Issue 12: records were keyed by relation and line position only, so reordering or editing a
facts file silently reused another fact's scores. Each case here changes the facts file between
two runs of the same command.
"""

from __future__ import annotations

import json
from pathlib import Path

from kn_lens import cli
from kn_lens.store import read_jsonl
from tests.cli.helpers import base_args

FACTS = [
    ("Alice", "Paris"),
    ("Bob", "London"),
    ("Zor", "Berlin"),
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is born in [Y] .", "[X] born in the city [Y] ."]


def write(path: Path, facts: list[tuple[str, str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"subject": s, "relation": "P19", "object": o, "templates": TEMPLATES})
            + "\n"
            for s, o in facts
        )
    )
    return path


def current(out: Path) -> dict[str, dict]:
    """The last stored record of each key (what a resumed store holds for it)."""
    recs: dict[str, dict] = {}
    for path in sorted((out / "attribution").glob("*.jsonl")):
        for rec in read_jsonl(path):
            recs[rec["key"]] = rec
    return recs


def attribute(tiny_ckpt: Path, facts: Path, out: Path, capsys) -> str:
    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "2")]) == 0
    return capsys.readouterr().err


def test_reordered_edited_and_removed_facts_are_scored_again(tmp_path, tiny_ckpt, capsys):
    facts, out = tmp_path / "f.jsonl", tmp_path / "o"
    write(facts, FACTS)
    attribute(tiny_ckpt, facts, out, capsys)
    first = current(out)
    assert [first[f"P19/{i}"]["object"] for i in range(3)] == ["Paris", "London", "Berlin"]

    # Same facts again: everything reused, nothing invalidated.
    err = attribute(tiny_ckpt, facts, out, capsys)
    assert "scoring them again" not in err and "duplicate" not in err
    assert current(out) == first

    # Reorder: the facts at positions 0 and 1 swap; both are scored again, not reused.
    write(facts, [FACTS[1], FACTS[0], FACTS[2]])
    err = attribute(tiny_ckpt, facts, out, capsys)
    assert "2 stored record(s)" in err
    now = current(out)
    assert now["P19/0"]["object"] == "London" and now["P19/1"]["object"] == "Paris"
    assert now["P19/0"]["scores"] == first["P19/1"]["scores"]  # the same fact, the same scores
    assert now["P19/2"] == first["P19/2"]

    # Edit one fact's object: only that fact is scored again.
    write(facts, [FACTS[1], FACTS[0], ("Zor", "Rome")])
    err = attribute(tiny_ckpt, facts, out, capsys)
    assert "1 stored record(s)" in err
    assert current(out)["P19/2"]["object"] == "Rome"

    # Remove the first fact: the others move up one position. Alice is at position 0 again,
    # where her first record still matches her exactly: reused. Zor-Rome moved: scored again.
    write(facts, [FACTS[0], ("Zor", "Rome")])
    err = attribute(tiny_ckpt, facts, out, capsys)
    assert "1 stored record(s)" in err and "duplicate" not in err
    recs = [r for p in (out / "attribution").glob("*.jsonl") for r in read_jsonl(p)]
    assert [r["object"] for r in recs if r["key"] == "P19/1"][-1] == "Rome"
    assert sum(r["key"] == "P19/0" and r["object"] == "Paris" for r in recs) == 1


def test_later_steps_never_read_neurons_of_other_facts(tmp_path, tiny_ckpt, capsys):
    facts, out = tmp_path / "f.jsonl", tmp_path / "o"
    write(facts, FACTS)
    attribute(tiny_ckpt, facts, out, capsys)
    assert cli.main(["identify", "--out", str(out), "--no-progress", "-q"]) == 0
    capsys.readouterr()
    write(facts, [FACTS[1], FACTS[0], FACTS[2]])
    # neurons.json was computed from the old order: modify refuses it ...
    rc = cli.main(["modify", "--out", str(out), "--no-progress", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "neurons.json" in err and "identify" in err and "Traceback" not in err
    # ... and identify without new scores reads only the fact whose scores are still current.
    assert cli.main(["identify", "--out", str(out), "--no-progress", "-q"]) == 0
    neurons = json.loads((out / "neurons.json").read_text())
    assert set(neurons["fingerprints"]) == {"P19/2"}
