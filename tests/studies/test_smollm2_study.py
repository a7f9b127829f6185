"""The committed SmolLM2-135M study: complete, and the READMEs quote its results.json."""

from __future__ import annotations

import importlib.util
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from kn_lens.experiments import ANALYSES
from kn_lens.experiments.edit_rules import RULE_METRICS
from kn_lens.experiments.localize import MEASURES, METHODS

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "studies" / "smollm2-135m"


def table_output(*args: str) -> str:
    spec = importlib.util.spec_from_file_location("study_table", STUDY / "table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert mod.main(list(args)) == 0
    return buf.getvalue()


#: Analyses added after the study ran, which it has not run yet (and why): remove an entry when the
#: study's results.json gains it.
NOT_YET_RUN: dict[str, str] = {}


def test_study_covers_every_analysis_with_controls():
    doc = json.loads((STUDY / "run" / "results.json").read_text())
    assert set(doc["results"]) == set(ANALYSES) - set(NOT_YET_RUN)
    rels = doc["results"]["identify"]["relations"]
    assert len(rels) >= 8 and sum(r["n_facts"] for r in rels.values()) >= 100
    for r in rels.values():  # per-relation statistics
        assert {"p", "neurons_per_fact", "overlap_same_relation"} <= set(r["ours"])
    overall = doc["results"]["modify"]["overall"]
    assert {"ours", "baseline", "random"} <= set(overall)
    assert overall["random"]["suppress"]["n_facts"] == overall["ours"]["suppress"]["n_facts"]
    assert all("random" in f for f in doc["results"]["update"]["facts"])
    assert doc["meta"]["config"]["dtype"] == "float32"
    neurons = json.loads((STUDY / "run" / "neurons.json").read_text())["neurons"]["ours"]
    lines = (STUDY / "facts.txt").read_text().splitlines()
    keys = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    assert sorted(neurons) == sorted(keys)


def test_study_compares_localisation_methods_and_edit_rules():
    """Issue 22's check: ``localize`` with the five methods and ``random``, every measure over at
    least 100 facts; ``update`` with at least three rules, ``random`` among them, each with every
    metric."""
    doc = json.loads((STUDY / "run" / "results.json").read_text())
    loc = doc["results"]["localize"]
    assert loc["n_facts"] >= 100 and list(loc["methods"]) == list(METHODS)
    assert "not_yet_measured" not in loc["skipped_facts"].values()
    untimed = set(loc["settings"]["not_timed"]) | {"random"}  # read from the store, or no scores
    for m, summary in loc["methods"].items():
        assert summary["n_facts"] == loc["n_facts"] and summary["n_facts_heldout"] >= 100
        for name in MEASURES:
            value = summary[name]
            undefined = (name == "seconds_per_fact" and m in untimed) or (
                name == "spearman_with_ig" and m == "random"
            )
            assert (value is None) == undefined, (m, name, value)
    assert loc["settings"]["not_timed"] == ["activation", "ig"]
    rules = doc["results"]["update"]["rules"]
    assert len(rules) >= 3 and "random" in rules
    for name, r in rules.items():
        assert r["n_facts"] > 0
        for metric in RULE_METRICS:
            assert metric in r, (name, metric)
        assert r["efficacy"] is not None and r["locality_same_relation"] is not None
    # symmetry: every edited P36 / P1376 fact, its inverse prompts from the other's templates
    sym = doc["results"]["update"]["symmetry"]
    edited = [f for f in doc["results"]["update"]["facts"] if f["relation"] in ("P36", "P1376")]
    assert sym["measured"] and sym["n_facts"] == len(edited) >= 10
    assert sym["sources"] == {"fact": 0, "templates": len(edited)}
    for name, r in rules.items():
        assert r["n_symmetry_facts"] == len(edited)
        assert r["symmetry"] is not None and r["symmetry_logp_gain"] is not None, name


def test_study_readme_quotes_the_generated_table():
    readme = (STUDY / "README.md").read_text()
    for line in table_output().splitlines():
        assert line in readme, f"studies/smollm2-135m/README.md lacks the row: {line}"


def test_top_level_readme_quotes_the_study_column():
    """The README's table has the default model's column too; its rows start with the study's."""
    readme = (REPO / "README.md").read_text().splitlines()
    table = table_output().split("\n\n")[0].splitlines()
    for line in table[2:]:  # the rows, without the header
        assert any(r.startswith(line) for r in readme), f"README.md lacks the row: {line}"


def test_lambda2_rerun_is_an_update_result_at_lambda2_1():
    doc = json.loads((STUDY / "lambda2-1" / "results.json").read_text())
    assert doc["meta"]["config"]["lambda2"] == 1.0
    update = doc["results"]["update"]
    assert update["lambda2"] == 1.0 and update["summary"]["knowledge"]["n_facts"] > 0


def test_table_adds_localize_and_rule_tables_once_the_study_has_them(tmp_path):
    """The study's table.py: with a ``localize`` section (and ``update.rules``) in results.json,
    the headline gains one row per method and the methods x measures / rules x metrics tables
    are printed. The values below are placeholders that exercise the layout, not results."""
    doc = json.loads((STUDY / "run" / "results.json").read_text())
    measures = {
        "n_facts": 3,
        "suppress_own": -50.0,
        "suppress_same_relation": -10.0,
        "suppress_other_relations": -1.0,
        "flips_own": 0.5,
        "heldout_suppress": -40.0,
        "overlap_with_ig": 0.25,
        "spearman_with_ig": None,
        "specificity": 40.0,
        "seconds_per_fact": None,
    }
    methods = ("ig", "activation", "grad_x_act", "ig_mean_baseline", "ig_contrastive", "random")
    fact = {
        m: {"suppress_own": -60.0, "suppress_same_relation": -20.0, "specificity": 40.0}
        for m in methods
    }
    facts = [
        {"key": "A/1", "measures": fact},
        {"key": "A/2", "measures": fact},
        {"key": "A/3", "ig_relaxed": True, "measures": {m: {"suppress_own": 0.0} for m in methods}},
    ]
    doc["results"]["localize"] = {
        "n_facts": 3,
        "methods": {m: dict(measures) for m in methods},
        "facts": facts,
        "relaxed_facts": ["A/3"],
    }
    rule = {"n_facts": 2.0, "efficacy": 50.0, "generalization": 25.0, "symmetry": None}
    doc["results"]["update"]["rules"] = {r: dict(rule) for r in ("paper", "eleuther", "random")}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    out = table_output("--study", str(path))
    for m in methods:
        assert f"| *beyond the paper:* localize, `{m}` neurons suppressed" in out
        row = f"| `{m}` | 3 | -50.0% | -10.0% | -1.0% | 50.0% | -40.0% | 40.0 | 0.25 | – | – |"
        assert row in out
    assert "| `eleuther` | 2 | 50.0% | 25.0% | – | – | – | – | – |" in out
    ours = "| this study, `eleuther` rule | SmolLM2-135M, 2 PARAREL facts | 50.0 | 25.0 | – / – |"
    assert ours in out
    assert "| EasyEdit README, KN | LLaMA-2-7B, ZsRE | 28.95 | 28.43 | 65.43 |" in out
    # the facts whose ig neurons the paper's refinement gave, without the relaxed one
    assert "| method (paper's refinement only) | facts | own | same relation |" in out
    assert "| `ig_contrastive` | 2 | -60.0% | -20.0% | – | 40.0 |" in out
