"""results.json schema validation and the report built from it alone (no model needed)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from kn_lens.report import paper_rows, write_report
from kn_lens.rundir import (
    RESULTS_SCHEMA,
    RESULTS_SCHEMA_VERSION,
    RunDirError,
    check_results,
    load_results,
    validate_results,
)


def minimal_doc() -> dict:
    """A small but complete results.json, with results in the analyses' own schemas."""
    return {
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_SCHEMA_VERSION,
        "meta": {
            "model": {"name": "default", "n_layers": 4, "d_mlp": 256, "n_params": 1000},
            "data": {
                "data": "default",
                "relations": None,
                "max_bags": 5,
                "n_facts": 10,
                "n_relations": 2,
                "relation_labels": {"W01": "place of birth", "W02": "native language"},
            },
            "config": {"steps": 20, "t": 0.2, "p": 0.7, "seed": 0, "lambda2": 8.0},
            "timings": {"attribute": 1.5, "identify": 0.2},
            "versions": {"kn_lens": "0.1.0", "python": "3.11"},
            "created": "2026-01-01T00:00:00+00:00",
            "updated": "2026-01-01T00:01:00+00:00",
        },
        "results": {
            "identify": {
                "schema": "identify",
                "schema_version": 1,
                "overall": {
                    "n_facts": 10,
                    "ours": {
                        "neurons_per_fact": 3.5,
                        "overlap_same_relation": 1.1,
                        "overlap_other_relations": 0.2,
                        "layer_pct": [10.0, 10.0, 30.0, 50.0],
                    },
                    "baseline": {
                        "neurons_per_fact": 4.0,
                        "overlap_same_relation": 2.0,
                        "overlap_other_relations": 1.5,
                        "layer_pct": [25.0, 25.0, 25.0, 25.0],
                    },
                },
            },
            "distant": {
                "schema": "distant",
                "schema_version": 1,
                "overall": {"ours": {"T1": 0.4, "T2": 0.05, "T3": 0.0}},
            },
            "update": {
                "schema": "update",
                "schema_version": 1,
                "summary": {"knowledge": {"success_rate": 0.3, "change_rate": 0.5, "n_facts": 4.0}},
                "facts": [
                    {
                        "key": "W01/0",
                        "relation": "W01",
                        "subject": "Zorvik",
                        "old_answer": "Paris",
                        "new_answer": "Rome",
                        "neurons": [[3, 1]],
                        "knowledge": {
                            "success_rate": 1.0,
                            "change_rate": 1.0,
                            "delta_intra_ppl": 0.5,
                        },
                    }
                ],
            },
            "trigger": {
                "schema": "trigger",
                "schema_version": 1,
                "top_t1_share": 0.9,
                "bottom_t1_share": 0.1,
                "facts": [
                    {
                        "key": "W01/0",
                        "relation": "W01",
                        "subject": "Zorvik",
                        "object": "Paris",
                        "neurons": [[3, 1]],
                        "top": [{"prompt": "Zorvik lived in [MASK] .", "type": "T1", "score": 2.0}],
                        "bottom": [
                            {"prompt": "Zorvik likes [MASK] .", "type": "T2", "score": -0.1}
                        ],
                    }
                ],
            },
            "erase": {
                "schema": "erase",
                "schema_version": 1,
                "erasures": [
                    {
                        "relation": "W01",
                        "summary": {
                            "ppl_before": 2.0,
                            "ppl_after": 9.0,
                            "accuracy_before": 0.9,
                            "accuracy_after": 0.1,
                            "others_mean_ppl_change": 0.05,
                        },
                    }
                ],
            },
        },
        "paper": {
            "identify": {
                "neurons_per_fact": {"ours": 4.13, "baseline": None},
                "overlap_same_relation": {"ours": 1.23, "baseline": None},
                "overlap_other_relations": {"ours": 0.09, "baseline": None},
            },
            "distant": {"ours": {"T1": 0.485, "T2": 0.019, "T3": -0.018}},
            "update": {"success_rate": 0.344, "change_rate": 0.485},
            "erase": {
                "P19": {"ppl_before": 1450.0, "ppl_after": 2996.0},
                "other_relations_ppl_change": [0.01, 0.10],
            },
        },
    }


def test_valid_document_passes():
    doc = minimal_doc()
    assert validate_results(doc) == []
    check_results(doc)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.pop("meta"), "missing required key 'meta'"),
        (lambda d: d["meta"]["model"].pop("name"), "meta.model: missing required key 'name'"),
        (lambda d: d.__setitem__("schema", "other"), "expected 'kn_lens.results'"),
        (lambda d: d.__setitem__("schema_version", "1"), "schema_version: expected integer"),
        (lambda d: d["meta"]["timings"].__setitem__("x", "slow"), "timings.x: expected number"),
        (lambda d: d["meta"]["config"].__setitem__("steps", 2.5), "config.steps: expected integer"),
        (lambda d: d["results"]["distant"].pop("schema"), "results.distant: missing required key"),
        (lambda d: d["results"].__setitem__("modify", []), "results.modify: expected object"),
        (lambda d: d["results"]["distant"]["overall"]["ours"].__setitem__("T1", math.nan), "NaN"),
        (lambda d: d["results"]["update"].__setitem__("schema", "modify"), "expected 'update'"),
        (
            lambda d: d["results"].__setitem__("edit", {"schema": "edit", "schema_version": 1}),
            "results.edit: unknown analysis",
        ),
    ],
)
def test_invalid_documents_are_named(mutate, needle):
    doc = copy.deepcopy(minimal_doc())
    mutate(doc)
    errors = validate_results(doc)
    assert any(needle in e for e in errors), errors
    with pytest.raises(ValueError, match="invalid results.json"):
        check_results(doc)


def test_paper_rows_put_paper_and_run_side_by_side():
    rows = {(r["analysis"], r["metric"]): r for r in paper_rows(minimal_doc())}
    r = rows[("identify", "knowledge neurons per fact (ours)")]
    assert (r["paper"], r["ours"]) == (4.13, 3.5)
    assert rows[("identify", "knowledge neurons per fact (baseline)")]["paper"] is None
    assert rows[("distant", "mean activation on T1 (ours)")]["ours"] == 0.4
    success = rows[("update", "success rate, % (knowledge neurons)")]
    assert success["paper"] == pytest.approx(34.4)  # one unit for every share: %
    # The erased world relation W01 is matched to the paper's P19 by its label.
    er = rows[("erase", "W01 (~P19, place of birth): perplexity after")]
    assert (er["paper"], er["ours"]) == (2996.0, 9.0)
    top = [k for k in rows if k[0] == "identify" and k[1].startswith("% of neurons")]
    assert rows[top[0]]["ours"] == 50.0


def test_write_report_from_results_json_alone(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(minimal_doc()))
    written = write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| Model | default (4 layers" in md
    assert "4.13" in md and "3.5" in md
    assert "Zorvik" in md and "Paris -> Rome" in md  # an edit example
    assert "Zorvik lived in [MASK] ." in md  # an activating prompt
    html = (tmp_path / "report.html").read_text()
    assert html.count("window.PlotlyConfig") <= 1  # plotly.js at most once
    if written["figures"]:
        assert html.count("window.PlotlyConfig") == 1
    # figure files are named after their analysis and share one plotly.min.js
    names = sorted(Path(f).name for f in written["figures"])
    assert names == ["distant.html", "trigger.html", "update.html"]  # the minimal doc's others
    # lack the fields their figures need: a broken figure is skipped, never fatal
    assert (tmp_path / "figures" / "plotly.min.js").is_file()


def test_load_results_rejects_bad_files(tmp_path):
    with pytest.raises(RunDirError, match="not found"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "x"}))
    with pytest.raises(ValueError, match="invalid results.json"):
        load_results(tmp_path)


def test_missing_png_exporter_is_said_once_in_full(tmp_path, monkeypatch, caplog):
    """Without an image exporter the figures are still written as HTML, and the notice comes once
    per report, with the exporter's whole reason."""
    import logging

    import plotly.graph_objects as go

    from kn_lens.plots import save_figure

    calls = []

    def no_exporter(self, *args, **kwargs):
        calls.append(1)
        raise RuntimeError(
            "\nImage export requires the Kaleido package, v1.0.0 or greater,\n"
            "which can be installed using pip: pip install kaleido\n"
        )

    monkeypatch.setattr(go.Figure, "write_image", no_exporter)
    out = save_figure(go.Figure(), tmp_path / "fig")
    assert set(out) == {"html", "png_skipped"} and (tmp_path / "fig.html").stat().st_size > 0
    assert out["png_skipped"].endswith("pip install kaleido")
    (tmp_path / "results.json").write_text(json.dumps(minimal_doc()))
    calls.clear()
    with caplog.at_level(logging.INFO, logger="kn_lens"):
        written = write_report(tmp_path)
    assert len(written["figures"]) == 3 and len(calls) == 1  # tried once, not per figure
    notices = [r.message for r in caplog.records if "PNG export" in r.message]
    assert len(notices) == 1 and "which can be installed using pip" in notices[0]


def test_sharded_attribution_time_is_the_sum_of_the_shards() -> None:
    from kn_lens.report import timings_text

    text = timings_text({"attribute shard 1/2": 10.0, "attribute shard 2/2": 12.5, "identify": 1.0})
    assert text.startswith("attribute 22.5s (sharded 2 ways: the sum of 2 shard run(s))")
    assert "identify 1.0s" in text and "shard 1/2" not in text
    assert timings_text({"attribute": 3.0, "identify": 1.0}) == "attribute 3.0s, identify 1.0s"
