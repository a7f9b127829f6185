"""The ``kn-lens`` command line on a tiny model and a tiny fact file.

Most tests call ``kn_lens.cli.main([...])`` in-process (no import cost); only the kill test runs
``python -m kn_lens`` in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from kn_lens import cli
from kn_lens.cli.parser import REPRODUCE_DEFAULT_MAX_BAGS, build_parser
from kn_lens.cli.run import from_args
from tests.cli.helpers import (
    RELATIONS,
    _assert_clean_error,
    all_keys,
    base_args,
    main_fake,
    write_facts,
)

# ---------------------------------------------------------------------------------------------
# Help and bad arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "attribute",
        "identify",
        "modify",
        "distant",
        "trigger",
        "update",
        "erase",
        "plot",
        "reproduce",
    ],
)
def test_help_of_every_command(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--out" in text and "default" in text
    if command != "plot":
        for opt in ("--model", "--data", "--relations", "--max-bags", "--seed"):
            assert opt in text
        # each command lists only the options it uses
        assert ("--steps" in text) == (command in ("attribute", "reproduce"))
        assert ("--shard" in text) == (command == "attribute")
        assert ("--web" in text) == (command in ("distant", "trigger", "reproduce"))
        assert ("--batch-size" in text) == (command != "identify")
    if command == "update":
        assert "--lambda1" in text and "--lambda2" in text
    if command == "attribute":
        assert "--shard" in text and "1-based" in text


def test_bad_shard(tmp_path, capsys):
    rc = cli.main(["attribute", "--shard", "3/2", "--out", str(tmp_path)])
    _assert_clean_error(capsys, rc, "3/2", "1-based")
    rc = cli.main(["attribute", "--shard", "x", "--out", str(tmp_path)])
    _assert_clean_error(capsys, rc, "K/N")


def test_missing_data_folder(tmp_path, capsys):
    rc = cli.main(["attribute", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    _assert_clean_error(capsys, rc, "kn-lens: error:", "nope")


def test_data_folder_without_pararel(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli.main(["attribute", *base_args(tiny_ckpt, tmp_path / "empty", tmp_path / "o")])
    assert rc == 2
    _assert_clean_error(capsys, rc, "kn-lens: error:", "lama")


def test_unknown_relation(tmp_path, tiny_ckpt, facts, capsys):
    rc = cli.main(
        ["attribute", *base_args(tiny_ckpt, facts, tmp_path / "o", "--relations", "P19,P999")]
    )
    assert rc == 2
    _assert_clean_error(capsys, rc, "P999", "P19")
    assert not (tmp_path / "o" / "run.json").exists()  # bad options are not recorded for reuse


def test_unknown_model_offline(tmp_path, facts, capsys):
    rc = cli.main(
        [
            "attribute",
            "--model",
            "surely-not-a-model-xyz",
            "--data",
            str(facts),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 2
    _assert_clean_error(capsys, rc, "kn-lens: error:", "surely-not-a-model-xyz")


def test_bad_set_override(tmp_path, facts, capsys):
    rc = cli.main(["identify", "--data", str(facts), "--set", "nonsense=1", "--out", str(tmp_path)])
    assert rc == 2
    _assert_clean_error(capsys, rc, "nonsense")


def test_plot_without_results(tmp_path, capsys):
    rc = cli.main(["plot", "--out", str(tmp_path)])
    assert rc == 2
    _assert_clean_error(capsys, rc, "results.json")


def test_identify_before_attribute(tmp_path, tiny_ckpt, facts, capsys, monkeypatch):
    rc = cli.main(
        [
            "identify",
            "--model",
            str(tiny_ckpt),
            "--data",
            str(facts),
            "--out",
            str(tmp_path / "o"),
            "-q",
        ]
    )
    assert rc == 2
    _assert_clean_error(capsys, rc, "kn-lens attribute")


# ---------------------------------------------------------------------------------------------
# Every subcommand on the tiny model and tiny facts (in-process, real analyses)
# ---------------------------------------------------------------------------------------------


def write_web(folder: Path, facts_path: Path, relations=("P19", "P106")) -> Path:
    """Bing-format web sentences for some relations of a facts file (same order as the facts)."""
    folder.mkdir(parents=True, exist_ok=True)
    facts = [json.loads(line) for line in facts_path.read_text().splitlines() if line.strip()]
    pairs = {}
    for rel in relations:
        fs = [f for f in facts if f["relation"] == rel]
        pairs[rel] = [[f["subject"], f["object"]] for f in fs]
        bags = [
            {
                "th_bags": [
                    f"{f['subject']} was born in {f['object']} .",
                    f"the {f['object']} of {f['subject']} is a city .",
                ],
                "h_bags": [
                    f"{f['subject']} is a doctor in London .",
                    f"{f['subject']} speaks French and German .",
                ],
            }
            for f in fs
        ]
        (folder / f"final_distant_allbags_{rel}_new.json").write_text(json.dumps(bags))
    (folder / "query_pairs.json").write_text(json.dumps(pairs))
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_ckpt):
    """Run every step once, in order, as separate commands on one --out folder."""
    root = tmp_path_factory.mktemp("pipeline")
    facts = write_facts(root / "facts.jsonl", per_relation=3)
    web = write_web(root / "web", facts)
    out = root / "out"
    rcs = {"attribute": cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "3")])}
    # Later commands reuse the recorded options (model, data, web, steps).
    for cmd in ("identify", "modify", "distant", "trigger", "update", "erase", "plot"):
        extra = {
            "update": ["--lambda1", "1", "--lambda2", "8"],
            "distant": ["--web", str(web)],
            "trigger": ["--web", str(web)],
        }.get(cmd, [])
        if cmd == "plot":
            rcs[cmd] = cli.main(["plot", "--out", str(out), "-q"])
        else:
            # the tiny model knows none of these facts: measure them all
            device = [] if cmd == "identify" else ["--device", "cpu", "--set", "known_share=0"]
            rcs[cmd] = cli.main([cmd, "--out", str(out), *device, "--no-progress", "-q", *extra])
    return out, rcs


@pytest.mark.parametrize(
    "command", ["attribute", "identify", "modify", "distant", "trigger", "update", "erase", "plot"]
)
def test_each_command_runs(pipeline, command):
    out, rcs = pipeline
    assert rcs[command] == 0
    doc = json.loads((out / "results.json").read_text())
    name = command
    if command not in ("attribute", "plot"):
        assert name in doc["results"]
        assert doc["meta"]["timings"][name] >= 0
    if command == "attribute":
        assert sorted(all_keys(out)) == sorted(f"{r}/{i}" for r in RELATIONS for i in range(3))
    if command == "identify":
        neurons = json.loads((out / "neurons.json").read_text())
        assert set(neurons["neurons"]) == {"ours", "baseline"}
        assert set(neurons["neurons"]["ours"]) == {f"{r}/{i}" for r in RELATIONS for i in range(3)}
    if command == "trigger":
        assert (out / "trigger_prompts.jsonl").is_file()
    if command == "update":
        assert doc["results"]["update"]["lambda2"] == 8
    if command == "plot":
        assert (out / "report.md").is_file() and (out / "report.html").is_file()
        figure_files = list((out / "figures").glob("*.html"))
        assert figure_files
        # the figures share one plotly.min.js beside them; report.html inlines it once
        js = out / "figures" / "plotly.min.js"
        assert js.is_file() and js.stat().st_size > 1_000_000
        for f in figure_files:
            text = f.read_text()
            assert 'src="plotly.min.js"' in text and "Plotly.newPlot" in text
            assert len(text) < 1_000_000, f"{f.name} inlines plotly.js"
        page = (out / "report.html").read_text()
        assert page.count("Plotly.newPlot") == len(figure_files) and len(page) > 1_000_000


def test_pipeline_results_json_is_valid(pipeline):
    from kn_lens.rundir import validate_results

    out, _ = pipeline
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    assert doc["meta"]["model"]["n_layers"] == 2
    assert doc["meta"]["data"]["n_facts"] == 9
    assert set(doc["results"]) >= {"identify", "modify", "distant", "trigger", "update", "erase"}
    md = (out / "report.md").read_text()
    assert "Paper vs this run" in md and "4.13" in md  # the paper's neurons per fact


def test_reproduce_runs_everything(tmp_path, tiny_ckpt):
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=2)
    web = write_web(tmp_path / "web", facts)
    out = tmp_path / "out"
    rc = cli.main(
        [
            "reproduce",
            *base_args(tiny_ckpt, facts, out, "--steps", "2", "--web", str(web), "--skip", "erase"),
            *("--set", "known_share=0"),  # the tiny model knows none of the facts
        ]
    )
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {
        "identify",
        "modify",
        "heldout",
        "localize",
        "distant",
        "trigger",
        "update",
    }
    assert "reproduce" in doc["meta"]["timings"]
    html = (out / "report.html").read_text()
    assert html.count("window.PlotlyConfig") == 1  # plotly.js embedded once
    # Rerunning resumes: attribution is not recomputed.
    before = (out / "attribution" / "P19.jsonl").read_bytes()
    assert (
        cli.main(
            [
                "reproduce",
                "--out",
                str(out),
                "--no-progress",
                "-q",
                "--skip",
                "erase",
                "--skip",
                "distant",
                "--skip",
                "trigger",
                "--skip",
                "update",
                "--skip",
                "modify",
                "--set",
                "known_share=0",
            ]
        )
        == 0
    )
    assert (out / "attribution" / "P19.jsonl").read_bytes() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_reproduce_on_cuda(tmp_path, tiny_ckpt):
    """Every analysis runs with --device cuda, and finds (nearly always) the CPU run's neurons."""
    facts = write_facts(tmp_path / "facts.jsonl", per_relation=2)
    web = write_web(tmp_path / "web", facts)
    docs, neurons = {}, {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = base_args(tiny_ckpt, facts, out, "--steps", "2", "--web", str(web))
        args += ["--set", "known_share=0"]  # the tiny model knows none of the facts
        args[args.index("--device") + 1] = device
        assert cli.main(["reproduce", *args]) == 0
        docs[device] = json.loads((out / "results.json").read_text())
        neurons[device] = json.loads((out / "neurons.json").read_text())["neurons"]
    assert set(docs["cuda"]["results"]) == set(docs["cpu"]["results"])
    for method, per_fact in neurons["cpu"].items():
        same = [per_fact[key] == neurons["cuda"][method][key] for key in per_fact]
        assert sum(same) >= 0.8 * len(same), method  # float noise may flip a borderline neuron


def test_distant_without_web_on_user_data(tmp_path, tiny_ckpt, facts, capsys, monkeypatch):
    from kn_lens.pipeline import Pipeline

    out = tmp_path / "o"
    (out).mkdir()
    fp = Pipeline(out, model=str(tiny_ckpt), data=str(facts), progress=False).fingerprints()
    (out / "neurons.json").write_text(
        json.dumps(
            {
                "schema": "kn_lens.neurons",
                "schema_version": 1,
                "neurons": {"ours": {"P19/0": [[1, 2]]}, "baseline": {}},
                "relations": {},
                "fingerprints": {"P19/0": fp["P19/0"]},
            }
        )
    )
    rc = main_fake(["distant", *base_args(tiny_ckpt, facts, out)])
    assert rc == 2
    _assert_clean_error(capsys, rc, "--web")


def test_reproduce_goes_on_when_one_analysis_fails(pipeline, capsys):
    out, _ = pipeline
    rc = cli.main(["erase", "--out", str(out), "--no-progress", "-q", "--erase", "P999"])
    assert rc == 2
    _assert_clean_error(capsys, rc, "P999")
    # reproduce carries on without it, reports it, and exits non-zero.
    rc = cli.main(
        [
            "reproduce",
            "--out",
            str(out),
            "--no-progress",
            "-q",
            "--skip",
            "distant",
            "--skip",
            "trigger",
            "--skip",
            "update",
            "--skip",
            "modify",
            "--erase",
            "P999",
            "--set",
            "known_share=0",
        ]
    )
    assert rc == 1
    _assert_clean_error(capsys, rc, "erase", "P999")
    assert (out / "report.md").is_file()


def test_pararel_data_unknown_relation(shared_data, tmp_path, tiny_ckpt, capsys):
    rc = cli.main(
        ["attribute", *base_args(tiny_ckpt, shared_data, tmp_path / "o", "--relations", "P19,P999")]
    )
    _assert_clean_error(capsys, rc, "P999")
    assert rc == 2


def test_later_steps_refuse_scores_of_another_model(
    tmp_path, tiny_ckpt, facts, monkeypatch, capsys
):
    out = tmp_path / "o"
    assert main_fake(["attribute", *base_args(tiny_ckpt, facts, out)]) == 0
    other = tmp_path / "other_ckpt"
    other.mkdir()
    rc = main_fake(["identify", "--model", str(other), "--out", str(out), "-q"])
    assert rc == 2
    _assert_clean_error(capsys, rc, "--model", str(tiny_ckpt))


def test_reproduce_defaults_on_the_builtin_world(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        parser = build_parser()
        run = from_args(parser.parse_args(["reproduce", "--out", str(tmp_path / "a")]))
        assert run.opts["max_bags"] == REPRODUCE_DEFAULT_MAX_BAGS
        assert run.opts["model"] == "default" and run.opts["data"] == "default"
        assert torch.get_num_threads() == 1  # small built-in model: one thread by default
        run = from_args(parser.parse_args(["attribute", "--out", str(tmp_path / "b")]))
        assert run.opts["max_bags"] is None
        run = from_args(
            parser.parse_args(["reproduce", "--max-bags", "3", "--out", str(tmp_path / "c")])
        )
        assert run.opts["max_bags"] == 3
    finally:
        torch.set_num_threads(before)


def test_lama_and_patterns_options(shared_data, tmp_path, tiny_ckpt, monkeypatch, capsys):
    out = tmp_path / "o"
    common = [
        "--model",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--no-progress",
        "-q",
        "--relations",
        "P19",
        "--max-bags",
        "2",
    ]
    rc = main_fake(["attribute", *common, "--lama", str(shared_data / "lama")])
    assert rc == 2
    _assert_clean_error(capsys, rc, "--patterns")
    assert (
        main_fake(
            [
                "attribute",
                *common,
                "--lama",
                str(shared_data / "lama"),
                "--patterns",
                str(shared_data / "pararel" / "patterns"),
            ]
        )
        == 0
    )
    assert all(k.startswith("P19/") for k in all_keys(out)) and all_keys(out)


def _immutable(path: Path) -> bool:
    """Make ``path`` immutable (``chattr +i``: root ignores chmod); False when not possible."""
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_out_on_a_read_only_place_is_a_one_line_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    (ro / "run").mkdir(parents=True)
    if not _immutable(ro / "run"):
        pytest.skip("chattr +i is not available here")
    try:
        rc = cli.main(["attribute", "--out", str(ro / "run"), "--no-progress", "-q"])
        assert rc == 2
        _assert_clean_error(capsys, rc, str(ro / "run"), "cannot write")
        subprocess.run(["chattr", "-i", str(ro / "run")], check=True)
        assert _immutable(ro)
        rc = cli.main(["identify", "--out", str(ro / "new"), "--no-progress", "-q"])
        assert rc == 2
        _assert_clean_error(capsys, rc, str(ro / "new"), "cannot create")
        assert not (ro / "new").exists()
    finally:
        for p in (ro / "run", ro):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path, capsys):
    out = tmp_path / "never"
    rc = cli.main(["identify", "--data", str(tmp_path / "missing.jsonl"), "--out", str(out), "-q"])
    assert rc == 2
    _assert_clean_error(capsys, rc, "missing.jsonl")
    assert not out.exists()


def _capitals_root(root: Path) -> Path:
    """A PARAREL/LAMA root with P36 facts (capital) and only the templates of their inverse,
    P1376 (capital of): no P1376 fact, so update's symmetry must come from the templates."""
    (root / "lama" / "TREx").mkdir(parents=True)
    (root / "pararel" / "patterns").mkdir(parents=True)
    rel = {"relation": "P36", "label": "capital", "type": "1-1"}
    (root / "lama" / "relations.jsonl").write_text(json.dumps(rel) + "\n")
    facts = [("Alice", "Paris"), ("Bob", "London"), ("Zor", "Berlin")]
    (root / "lama" / "TREx" / "P36.jsonl").write_text(
        "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in facts)
    )
    pats = {
        "P36": [
            "the capital of [X] is [Y] .",
            "[X] capital city is [Y] .",
            "in [X] the capital is [Y] .",
            "the capital city of [X] is [Y] .",
        ],
        "P1376": ["[X] is the capital of [Y] .", "the capital of [Y] is [X] ."],
    }
    for r, ps in pats.items():
        (root / "pararel" / "patterns" / f"{r}.jsonl").write_text(
            "".join(json.dumps({"pattern": p}) + "\n" for p in ps)
        )
    return root


def test_update_symmetry_reads_the_inverse_relations_templates(tmp_path, tiny_ckpt):
    root = _capitals_root(tmp_path / "data")
    out = tmp_path / "out"
    args = ["--device", "cpu", "--no-progress", "-q"]
    assert cli.main(["attribute", *base_args(tiny_ckpt, root, out, "--steps", "2")]) == 0
    assert cli.main(["identify", "--out", str(out), "-q"]) == 0
    # the tiny model knows none of the facts, and its few neurons are shared: measure them all
    sets = ["--set", "known_share=0", "--set", "max_relation_share=1"]
    assert cli.main(["update", "--out", str(out), *args, *sets]) == 0
    upd = json.loads((out / "results.json").read_text())["results"]["update"]
    facts = upd["facts"]
    assert facts and upd["symmetry"]["measured"] is True
    assert upd["symmetry"]["sources"] == {"fact": 0, "templates": len(facts)}
    for f in facts:
        assert f["rule_info"]["symmetry_prompts"] == [
            f"{f['new_answer']} is the capital of [MASK] .",
            f"the capital of [MASK] is {f['new_answer']} .",
        ]
        assert 0.0 <= f["rules"]["paper"]["symmetry"] <= 100.0
