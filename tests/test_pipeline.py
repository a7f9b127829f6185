"""The pipeline as a library (kn_lens.pipeline): a run without argparse, resumable attribution,
the same folder as the command line's, Compute's settings and unchanged fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kn_lens import cli
from kn_lens.config import DEFAULT_BATCH_SIZE, Compute, PaperConfig, default_batch_size
from kn_lens.data.facts import Fact, FactBag
from kn_lens.pipeline import Pipeline, PipelineError
from kn_lens.rundir import fingerprint, score_settings
from kn_lens.store import read_jsonl

CONFIG = PaperConfig(steps=2)


def pipeline(out: Path, **kw) -> Pipeline:
    kw.setdefault("compute", Compute(device="cpu", threads=1))
    return Pipeline(
        out, "default", "default", relations="W01", max_bags=2, config=CONFIG, progress=False, **kw
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with attribution, neurons and one analysis, made through the Python API only."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    p = pipeline(out)
    summary = p.attribute()
    assert summary == {"n_scored": 2, "n_facts": 2, "n_invalidated": 0, "shard": "1/1"}
    p.identify()
    p.run_analysis("modify")
    return out


def test_attribute_identify_and_an_analysis(run_dir: Path) -> None:
    records = read_jsonl(run_dir / "attribution" / "W01.jsonl")
    assert len(records) == 2
    assert all(r["steps"] == 2 and r["fingerprint"] for r in records)
    neurons = json.loads((run_dir / "neurons.json").read_text())
    assert set(neurons["fingerprints"]) == {r["key"] for r in records}
    doc = json.loads((run_dir / "results.json").read_text())
    assert {"identify", "modify"} <= set(doc["results"])
    assert doc["meta"]["config"]["steps"] == 2
    assert doc["meta"]["config"]["batch_size"] == DEFAULT_BATCH_SIZE["cpu"]  # from Compute
    run = json.loads((run_dir / "run.json").read_text())
    assert run["options"]["relations"] == ["W01"] and run["options"]["max_bags"] == 2
    assert run["options"]["steps"] == 2  # config's steps count as given


def test_attribute_again_scores_nothing(run_dir: Path) -> None:
    before = (run_dir / "attribution" / "W01.jsonl").read_bytes()
    summary = pipeline(run_dir).attribute()
    assert summary["n_scored"] == 0 and summary["n_facts"] == 2
    assert (run_dir / "attribution" / "W01.jsonl").read_bytes() == before


def test_options_left_out_come_from_the_folder(run_dir: Path) -> None:
    p = Pipeline(run_dir, config=CONFIG, compute=Compute(device="cpu", threads=1))
    assert p.opts["relations"] == ["W01"] and p.opts["max_bags"] == 2
    assert len(p.neurons("ours")) == 2  # the same facts and settings: the stored neurons


def test_the_command_line_continues_a_pipeline_folder(run_dir: Path) -> None:
    argv = ["attribute", "--out", str(run_dir), "--no-progress", "-q"]
    assert cli.main(argv) == 0  # the model, facts and steps=2 that run.json recorded
    assert len(read_jsonl(run_dir / "attribution" / "W01.jsonl")) == 2  # nothing scored again


def test_other_settings_make_the_stored_results_stale(run_dir: Path) -> None:
    p = pipeline(run_dir, compute=Compute(device="cpu", threads=1))
    p.base_config = PaperConfig(steps=3)
    with pytest.raises(PipelineError, match="other facts or settings"):
        p.neurons("ours")


def test_unknown_analysis_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="unknown analysis 'nope'"):
        pipeline(tmp_path / "o").run_analysis("nope")


def test_compute_fills_the_config() -> None:
    assert default_batch_size("cuda:1") == DEFAULT_BATCH_SIZE["cuda"]
    assert Compute().rows() == DEFAULT_BATCH_SIZE["cpu"]
    assert Compute(device="cuda").rows() == DEFAULT_BATCH_SIZE["cuda"]
    assert Compute(batch_size=8).rows("cuda") == 8
    cfg = Compute(batch_size=8, dtype="bfloat16").apply(PaperConfig(t=0.3))
    assert (cfg.batch_size, cfg.dtype, cfg.t) == (8, "bfloat16", 0.3)
    assert Compute().apply(PaperConfig(), "cuda").batch_size == DEFAULT_BATCH_SIZE["cuda"]
    with pytest.raises(Exception, match="dtype"):
        Compute(dtype="float64")


def test_fingerprints_are_unchanged() -> None:
    """The values the command line computed before fingerprints moved to kn_lens.rundir: run
    folders made then (the committed study's among them) are reused."""
    bag = FactBag(
        Fact("Poland", "P36", "capital", "1-1", "Warsaw"),
        ("The capital of Poland is [MASK] .", "Poland's capital, [MASK] ."),
        index=3,
    )
    assert score_settings("smollm2-135m", PaperConfig()) == {"model": "smollm2-135m", "steps": 20}
    assert fingerprint(bag, score_settings("smollm2-135m", PaperConfig())) == "02ef3430fea7d5ca"
    settings = score_settings("default", PaperConfig(steps=4, dtype="bfloat16"))
    assert fingerprint(bag, settings) == "b44b340078d83f75"


def test_the_command_line_only_parses_and_calls() -> None:
    """kn_lens/cli/ stays small: the steps, options and fingerprints live in the pipeline and the
    run folder."""
    cli_dir = Path(cli.__file__).parent
    lines = sum(len(f.read_text().splitlines()) for f in cli_dir.glob("*.py"))
    assert lines <= 500, f"kn_lens/cli/ has {lines} lines"
    assert not (cli_dir / "steps.py").exists()
