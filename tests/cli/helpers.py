"""Helpers of the CLI tests: a tiny facts file whose answers are one token of the tiny vocab,
a cheap stand-in scorer, and the common arguments."""

from __future__ import annotations

import json
from pathlib import Path

from kn_lens import cli
from kn_lens.store import read_jsonl

REPO = Path(__file__).resolve().parents[2]

# Subjects and answers from conftest.TINY_WORDS, so every object is one token of the tiny vocab.
SUBJECTS = ["Alice", "Bob", "Zor", "Kal", "Mur", "Zorvik", "Kaldal", "Murvik", "Zoren", "Kalo"]
RELATIONS = {
    "P19": (
        ["Paris", "London", "Berlin", "Rome", "Madrid"],
        [
            "[X] was born in [Y] .",
            "[X] is born in [Y] .",
            "[X] born in the city [Y] .",
            "the city [X] was born in is [Y] .",
        ],
    ),
    "P37": (
        ["French", "English", "German", "Italian"],
        [
            "[X] speaks [Y] .",
            "the language of [X] is [Y] .",
            "[X] speaks the language [Y] .",
            "in [X] the language is [Y] .",
        ],
    ),
    "P106": (
        ["doctor", "lawyer", "actor"],
        ["[X] works as a [Y] .", "[X] is a [Y] .", "[X] was a [Y] .", "[X] works as [Y] ."],
    ),
}


def write_facts(path: Path, per_relation: int = 4) -> Path:
    lines = []
    for rel, (objects, templates) in RELATIONS.items():
        for i in range(per_relation):
            lines.append(
                json.dumps(
                    {
                        "subject": SUBJECTS[i % len(SUBJECTS)]
                        + ("" if i < len(SUBJECTS) else " Bob"),
                        "relation": rel,
                        "object": objects[i % len(objects)],
                        "templates": templates,
                        "relation_type": "N-1",
                    }
                )
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_score(model, bag, config):
    """A cheap stand-in for kn_lens.knowledge_neurons.score_bag(...).to_dict()."""
    return {
        "key": bag.key,
        "relation": bag.relation,
        "n_prompts": len(bag.prompts),
        "steps": config.steps,
    }


def main_fake(argv: list[str]) -> int:
    """``kn-lens ARGV`` with :func:`fake_score` as the executor's per-fact scorer."""
    return cli.main(argv, score=fake_score)


def base_args(tiny_ckpt: Path, facts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(tiny_ckpt),
        "--data",
        str(facts),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "-q",
        *extra,
    ]


def all_keys(out: Path) -> list[str]:
    keys = []
    for f in sorted((out / "attribution").glob("*.jsonl")):
        keys += [r["key"] for r in read_jsonl(f)]
    return keys


def _assert_clean_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    assert "error:" in err
    for n in needles:
        assert n in err, err
    return err
