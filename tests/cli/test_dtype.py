"""``--dtype``: an opt-in lower precision for attribution, recorded with the scores and never mixed
with scores of another precision."""

from __future__ import annotations

import json

import torch

from kn_lens import cli
from kn_lens.knowledge_neurons import BagScores
from tests.cli.helpers import _assert_clean_error, base_args, main_fake


def seen_dtypes(model, bag, config):
    """A stand-in scorer that records the precision it was asked for."""
    return {"key": bag.key, "relation": bag.relation, "dtype": config.dtype}


def test_dtype_reaches_the_scorer_and_is_never_mixed(tmp_path, tiny_ckpt, facts, capsys):
    out = tmp_path / "o"
    args = base_args(tiny_ckpt, facts, out, "--relations", "P19", "--max-bags", "2")
    assert cli.main(["attribute", *args, "--dtype", "bfloat16"], score=seen_dtypes) == 0
    recs = [json.loads(line) for line in (out / "attribution" / "P19.jsonl").open()]
    assert [r["dtype"] for r in recs] == ["bfloat16", "bfloat16"]
    # another precision into the same folder is refused, naming the option
    rc = main_fake(["attribute", *args, "--dtype", "float32"])
    _assert_clean_error(capsys, rc, "--dtype bfloat16")
    assert json.loads((out / "run.json").read_text())["options"]["dtype"] == "bfloat16"


def test_bfloat16_scores_track_float32_on_the_default_model(tmp_path):
    n = torch.get_num_threads()
    try:
        common = ["--relations", "W01", "--max-bags", "1", "--steps", "4", "--no-progress", "-q"]
        for dtype in ("float32", "bfloat16"):
            assert (
                cli.main(["attribute", *common, "--dtype", dtype, "--out", str(tmp_path / dtype)])
                == 0
            )
    finally:
        torch.set_num_threads(n)

    def ig(dtype):
        rec = json.loads((tmp_path / dtype / "attribution" / "W01.jsonl").read_text())
        kept = BagScores.from_dict(rec).prompt_scores("ig")
        return {(i, layer, idx): s for i, ps in enumerate(kept) for layer, idx, s in ps.neurons}

    a, b = ig("float32"), ig("bfloat16")
    keys = sorted(set(a) | set(b))
    assert len(keys) > 10
    pair = torch.tensor([[a.get(k, 0.0), b.get(k, 0.0)] for k in keys], dtype=torch.float64)
    assert torch.corrcoef(pair.T)[0, 1] > 0.99  # an approximation that tracks the exact scores
