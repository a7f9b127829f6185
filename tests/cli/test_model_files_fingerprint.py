"""The fingerprint covers the model's files (weights, config, tokenizer), not only its name.

Issue 21, item 1: changing the weights at the same model path reused the old scores. And the
migration: a folder whose fingerprints predate weight hashing adopts the current weights once,
with a warning, and is checked from then on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kn_lens import cli
from kn_lens.store import read_jsonl
from tests.cli.helpers import base_args
from tests.cli.test_stale_scores import current, write


@pytest.fixture
def ckpt(tmp_path, tiny_ckpt) -> Path:
    """A copy of the tiny checkpoint that a test may change."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))


def perturb(folder: Path) -> None:
    """Change one MLP weight matrix of the checkpoint in place (same path, same size)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    sd = load_file(str(path))
    key = next(k for k in sd if "layer.1.intermediate.dense.weight" in k)
    sd[key] = sd[key] + 0.5 * torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(1))
    save_file(sd, str(path), metadata={"format": "pt"})


def run(cmd: str, ckpt: Path, facts: Path, out: Path, capsys, *, quiet=True) -> tuple[int, str]:
    """``kn-lens CMD`` on the folder: attribute with the model, facts and ``--steps 2``; later
    steps with the options run.json recorded."""
    if cmd == "attribute":
        args = base_args(ckpt, facts, out, "--steps", "2")
    else:
        args = ["--out", str(out), "--no-progress", "-q"]
        # the tiny model knows none of the facts: the analyses measure them all
        args += ["--device", "cpu", "--set", "known_share=0"] if cmd != "identify" else []
    rc = cli.main([cmd, *[a for a in args if quiet or a != "-q"]])
    return rc, capsys.readouterr().err


def test_changed_weights_are_scored_again_and_old_neurons_refused(tmp_path, ckpt, capsys):
    facts, out = (
        write(tmp_path / "f.jsonl", [("Alice", "Paris"), ("Bob", "London")]),
        tmp_path / "o",
    )
    assert run("attribute", ckpt, facts, out, capsys)[0] == 0
    first = current(out)
    rc, err = run("identify", ckpt, facts, out, capsys)
    assert rc == 0, err
    # The same files again: reused.
    rc, err = run("attribute", ckpt, facts, out, capsys)
    assert rc == 0 and "scoring them again" not in err and current(out) == first

    perturb(ckpt)
    # The neurons of the old weights are refused by every later step ...
    rc, err = run("modify", ckpt, facts, out, capsys)
    assert rc == 2 and "neurons.json" in err and "model files" in err
    # ... and attribute scores both facts again, with other scores.
    rc, err = run("attribute", ckpt, facts, out, capsys, quiet=False)
    assert rc == 0 and "2 stored record(s)" in err
    again = current(out)
    for key in first:
        assert again[key]["fingerprint"] != first[key]["fingerprint"]
        assert again[key]["scores"] != first[key]["scores"]
    assert run("identify", ckpt, facts, out, capsys)[0] == 0
    assert run("modify", ckpt, facts, out, capsys)[0] == 0
    meta = json.loads((out / "results.json").read_text())["meta"]["model"]
    assert len(meta["files_sha256"]) == 64


def _make_legacy(out: Path, ckpt: Path, facts: Path) -> None:
    """Rewrite ``out`` as kn_lens wrote it before weight hashing: fingerprints without the model
    files' hash, and an attribution/meta.json without the mark of weight hashing."""
    from kn_lens.config import PaperConfig
    from kn_lens.pipeline import Pipeline
    from kn_lens.rundir import fingerprint, score_settings

    p = Pipeline(out, progress=False)
    legacy = {b.key: fingerprint(b, score_settings(str(ckpt), p.config)) for b in p.bags}
    assert p.config.steps == 2 and isinstance(p.config, PaperConfig)
    for path in (out / "attribution").glob("*.jsonl"):
        recs = [{**r, "fingerprint": legacy[r["key"]]} for r in read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    neurons = json.loads((out / "neurons.json").read_text())
    neurons["fingerprints"] = {k: legacy[k] for k in neurons["fingerprints"]}
    (out / "neurons.json").write_text(json.dumps(neurons))
    meta_path = out / "attribution" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("fingerprints_hash_weights")
    meta_path.write_text(json.dumps(meta))


def test_a_folder_from_before_weight_hashing_adopts_the_weights_once(tmp_path, ckpt, capsys):
    facts, out = (
        write(tmp_path / "f.jsonl", [("Alice", "Paris"), ("Bob", "London")]),
        tmp_path / "o",
    )
    assert run("attribute", ckpt, facts, out, capsys)[0] == 0
    assert run("identify", ckpt, facts, out, capsys)[0] == 0
    _make_legacy(out, ckpt, facts)
    stored = current(out)

    # The first run on it adopts the current files' hash, says so, and reuses everything.
    rc, err = run("modify", ckpt, facts, out, capsys, quiet=False)
    assert rc == 0 and "before kn_lens hashed the model's files" in err
    meta = json.loads((out / "attribution" / "meta.json").read_text())
    assert len(meta["legacy_weights"]["sha256"]) == 64
    rc, err = run("attribute", ckpt, facts, out, capsys, quiet=False)
    assert rc == 0 and "0 fact(s) to score" in err and "hashed" not in err  # warned once only
    assert current(out) == stored

    # From then on it is checked: other weights score the facts again.
    perturb(ckpt)
    rc, err = run("modify", ckpt, facts, out, capsys)
    assert rc == 2 and "neurons.json" in err
    rc, err = run("attribute", ckpt, facts, out, capsys, quiet=False)
    assert rc == 0 and "2 stored record(s)" in err
    assert all(current(out)[k]["scores"] != stored[k]["scores"] for k in stored)


def test_neurons_json_without_fingerprints_is_refused(tmp_path, ckpt, capsys):
    """Removing the fingerprints does not turn the staleness check off."""
    facts, out = write(tmp_path / "f.jsonl", [("Alice", "Paris")]), tmp_path / "o"
    assert run("attribute", ckpt, facts, out, capsys)[0] == 0
    assert run("identify", ckpt, facts, out, capsys)[0] == 0
    doc = json.loads((out / "neurons.json").read_text())
    doc.pop("fingerprints")
    (out / "neurons.json").write_text(json.dumps(doc))
    rc, err = run("modify", ckpt, facts, out, capsys)
    assert rc == 2 and "neurons.json" in err and "no fingerprint" in err and "P19/0" in err
    doc["fingerprints"] = "oops"
    (out / "neurons.json").write_text(json.dumps(doc))
    rc, err = run("modify", ckpt, facts, out, capsys)
    assert rc == 2 and "'fingerprints'" in err and "Traceback" not in err
