"""Every section of results.json and the report says which facts it covers (issue 21): a later,
smaller run into the same folder marks the sections it did not redo as stale; facts asked for but
not identified are left out loudly; facts the model does not know are left out of every analysis,
listed with why."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kn_lens.config import Compute, PaperConfig
from kn_lens.coverage import section_facts, section_state, selection_id
from kn_lens.pipeline import Pipeline
from kn_lens.readout import known_facts
from kn_lens.report import paper_rows

CONFIG = PaperConfig(steps=2)
COMPUTE = Compute(device="cpu", threads=1)


def run(out: Path, **kw) -> Pipeline:
    return Pipeline(out, "default", "default", config=CONFIG, compute=COMPUTE, progress=False, **kw)


def doc_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_selection_id_is_order_free_and_sees_fingerprints() -> None:
    a = selection_id({"W01/1": "x", "W01/2": "y"})
    assert a == selection_id({"W01/2": "y", "W01/1": "x"})
    assert a != selection_id({"W01/1": "x", "W01/2": "z"})
    assert a != selection_id({"W01/1": "x"})


def test_section_facts_accounts_for_every_selected_fact() -> None:
    cov = section_facts("s", ["a", "b", "c"], ["c", "a"], {"b": "why"})
    assert cov["measured"] == ["a", "c"] and cov["n_measured"] == 2 and cov["n_selected"] == 3
    assert cov["left_out"] == {"b": "why"}
    cov = section_facts("s", ["a", "b"], ["a"], {})
    assert cov["left_out"] == {"b": "not measured by this analysis"}


def test_section_state() -> None:
    doc = {
        "meta": {"data": {"selection": "now"}},
        "results": {
            "modify": {"coverage": {"selection": "now"}},
            "erase": {"coverage": {"selection": "before"}},
            "update": {},  # an older kn_lens wrote it; a newer one has run since
        },
    }
    assert section_state(doc, "modify") == "current"
    assert section_state(doc, "erase") == "stale"
    assert section_state(doc, "update") == "stale"
    doc["meta"]["data"] = {}  # all of it from an older kn_lens
    assert section_state(doc, "update") == "unrecorded"


def test_a_smaller_run_into_the_same_folder_marks_the_rest_stale(tmp_path: Path) -> None:
    """The issue's repro: W01,W03 with 2 facts each, then W01 with 1 fact, skipping update and
    erase: the report shows no update or erase numbers under a header that says 1 fact."""
    out = tmp_path / "run"
    big = run(out, relations="W01,W03", max_bags=2)
    big.reproduce(skip=("localize", "heldout", "distant", "trigger"), report=False)
    first = doc_of(out)
    big_keys = [b.key for b in big.bags]
    for name in ("identify", "modify", "update", "erase"):
        cov = first["results"][name]["coverage"]
        assert cov["selection"] == first["meta"]["data"]["selection"]
        assert cov["n_selected"] == 4
        assert set(cov["measured"]) | set(cov["left_out"]) == set(big_keys)
    small = run(out, relations="W01", max_bags=1)
    small.reproduce(skip=("localize", "heldout", "distant", "trigger", "update", "erase"))
    doc = doc_of(out)
    assert doc["meta"]["data"]["n_facts"] == 1
    assert section_state(doc, "modify") == "current"
    assert section_state(doc, "update") == "stale" and section_state(doc, "erase") == "stale"
    assert {r["analysis"] for r in paper_rows(doc)} == {"identify", "modify"}
    md = (out / "report.md").read_text()
    erase = md.split("## Erasing relations")[1].split("\n## ")[0]
    assert "Stale, numbers not shown" in erase and "| W01" not in erase and "figure:" not in erase
    assert "### Updating facts" not in md  # no update examples
    assert "Stale (computed on other facts" in md and "update, erase" in md
    modify = md.split("## Suppressing and amplifying")[1].split("\n## ")[0]
    assert f"Facts: 1 of the 1 selected measured ({small.bags[0].key})" in modify
    assert doc["meta"]["created"] <= doc["meta"]["started"] <= doc["meta"]["updated"]
    assert doc["meta"]["created"] == first["meta"]["started"]  # the first run's start


def test_facts_not_identified_are_left_out_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """identify on 1 fact per relation, then modify on 2: the facts without neurons are named
    in a warning, in modify's skipped_facts and in its coverage."""
    out = tmp_path / "run"
    one = run(out, relations="W02,W04", max_bags=1)
    one.attribute()
    one.identify()
    two = run(out, relations="W02,W04", max_bags=2)
    with caplog.at_level(logging.WARNING, logger="kn_lens.pipeline"):
        result = two.run_analysis("modify")
    new = sorted({b.key for b in two.bags} - {b.key for b in one.bags})
    assert len(new) == 2
    warned = [r.getMessage() for r in caplog.records if "NOT measured" in r.getMessage()]
    assert warned and all(k in warned[0] for k in new)
    assert all("not identified" in result.skipped_facts[k] for k in new)
    res = doc_of(out)["results"]["modify"]
    assert all("not identified" in res["skipped_facts"][k] for k in new)
    assert res["coverage"]["n_selected"] == 4 and res["coverage"]["n_measured"] == 2
    assert sorted(res["coverage"]["left_out"]) == new


def test_unknown_facts_are_left_out_of_every_analysis_and_listed(tmp_path: Path) -> None:
    """W01/12 is a fact the default model does not know (its answer is top-1 on none of its
    prompts); W01/79 it knows. modify measures W01/79 only; results.json and the report say why
    W01/12 is left out."""
    facts = tmp_path / "keys.txt"
    facts.write_text("W01/12\nW01/79\n")
    out = tmp_path / "run"
    p = run(out, relations="W01", facts=str(facts))
    known = known_facts(p.model, p.bags)
    assert not known["W01/12"].known and known["W01/79"].known
    p.attribute()
    p.identify()
    result = p.run_analysis("modify")
    assert [f.key for f in result.facts] == ["W01/79"]
    doc = doc_of(out)
    k = doc["meta"]["known"]
    assert k["n_facts"] == 2 and k["n_known"] == 1 and list(k["unknown"]) == ["W01/12"]
    assert k["facts"]["W01/12"]["n_top1"] == known["W01/12"].n_top1
    cov = doc["results"]["modify"]["coverage"]
    assert cov["measured"] == ["W01/79"] and "not known to the model" in cov["left_out"]["W01/12"]
    assert doc["results"]["identify"]["coverage"]["n_measured"] == 2  # identify: every fact
    p.write_report()
    md = (out / "report.md").read_text()
    assert "Known to the model: 1 of 2" in md
    assert "- W01/12: not known to the model (answer top-1 on" in md
