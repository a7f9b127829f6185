"""The public Python API: ``kn_lens.attribute`` scores reused by ``find_knowledge_neurons``, the
per-device batch size and the config's dtype in ``score_bag``, ``dir(kn_lens)``, and bad input
raising :class:`kn_lens.KnLensError`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kn_lens
import kn_lens.knowledge_neurons as kn
from kn_lens import KnLensError, PaperConfig
from kn_lens.config import DEFAULT_BATCH_SIZE
from kn_lens.data import Fact, FactBag

_FACT = Fact("Alice", "P19", "place of birth", "N-1", "Paris")


@pytest.fixture(scope="module")
def default_model_and_bag():
    model = kn_lens.load_model("default", device="cpu")
    return model, kn_lens.data.default_facts()[0]


def test_find_knowledge_neurons_reuses_attribute_scores(default_model_and_bag, monkeypatch):
    model, bag = default_model_and_bag
    scores = kn_lens.attribute(model, bag.prompts, bag.object)
    assert tuple(scores.shape) == (len(bag.prompts), model.cfg.n_layers, model.cfg.d_mlp)
    fresh = kn_lens.find_knowledge_neurons(model, bag)
    assert fresh  # the default model's facts have knowledge neurons

    def no_attribution(*args, **kwargs):
        raise AssertionError("scores= was given: nothing may be attributed again")

    monkeypatch.setattr(kn.attribution, "attribute", no_attribution)
    assert kn_lens.find_knowledge_neurons(model, bag, scores=scores) == fresh
    record = kn.BagScores.from_tensors(bag, {"ig": scores})
    assert kn_lens.find_knowledge_neurons(model, bag, scores=record) == fresh


def test_scores_of_the_wrong_shape_name_the_mismatch(default_model_and_bag):
    model, bag = default_model_and_bag
    n, n_layers, d_mlp = len(bag.prompts), model.cfg.n_layers, model.cfg.d_mlp
    cases = {
        (n + 1, n_layers, d_mlp): "prompt rows",
        (n, n_layers - 1, d_mlp): "layers",
        (n, n_layers, d_mlp + 1): "d_mlp",
        (n_layers, d_mlp): "[prompt, layer, d_mlp]",
    }
    for shape, needle in cases.items():
        with pytest.raises(KnLensError, match=r"do not fit bag") as info:
            kn_lens.find_knowledge_neurons(model, bag, scores=torch.rand(shape))
        assert needle in str(info.value) and bag.key in str(info.value)
    bad = torch.rand(n, n_layers, d_mlp)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(KnLensError, match="non-finite"):
        kn_lens.find_knowledge_neurons(model, bag, scores=bad)
    other = kn.BagScores.from_tensors(bag, {"ig": torch.rand(n, n_layers, d_mlp + 1)})
    with pytest.raises(KnLensError, match="neurons"):
        kn_lens.find_knowledge_neurons(model, bag, scores=other)


def _recording_attribute(calls: list[dict]):
    def attribute(model, prompts, target, **kwargs):
        calls.append(kwargs)
        return torch.rand(len(prompts), 2, 4)

    return attribute


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_score_bag_uses_the_device_batch_size_and_config_dtype(tiny_model, monkeypatch, device):
    calls: list[dict] = []
    monkeypatch.setattr(kn.attribution, "attribute", _recording_attribute(calls))
    model = tiny_model
    monkeypatch.setattr(model.cfg, "device", device)  # attribution is a stand-in: nothing runs
    bag = FactBag(_FACT, ("Alice was born in [MASK] .",) * 3)
    per_device = DEFAULT_BATCH_SIZE[device.split(":")[0]]

    kn.score_bag(model, bag, methods=("ig",))
    kn.score_bag(model, bag, PaperConfig(t=0.3, dtype="bfloat16"), methods=("ig",))
    kn.score_bag(model, bag, PaperConfig(batch_size=7), methods=("ig",))
    kn.score_bag(model, bag, PaperConfig(batch_size=7), methods=("ig",), batch_size=64)
    kn.score_bag(model, bag, PaperConfig(dtype="bfloat16"), methods=("ig",), dtype="float16")
    kn.find_knowledge_neurons(model, bag)
    got = [(c["batch_size"], c["dtype"]) for c in calls]
    assert got == [
        (per_device, "float32"),
        (per_device, "bfloat16"),  # dtype=None honours the config
        (7, "float32"),  # a batch size set in the config is kept
        (64, "float32"),  # batch_size= wins
        (per_device, "float16"),  # dtype= wins
        (per_device, "float32"),
    ]


def test_dir_lists_the_public_names_without_importing_torch() -> None:
    names = dir(kn_lens)
    for name in kn_lens.__all__:
        assert name in names
    for name in ("attribute", "find_knowledge_neurons", "load_model", "KnLensError", "Neuron"):
        assert name in names
    code = (
        "import sys, kn_lens; names = dir(kn_lens); "
        "assert 'load_model' in names and 'attribute' in names, names; "
        "assert 'torch' not in sys.modules, 'import kn_lens imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_raises_knlenserror(tiny_model, tmp_path) -> None:
    from kn_lens.data import load_pararel
    from kn_lens.interventions import neuron_hooks
    from kn_lens.neuron import check_neurons
    from kn_lens.store import Shard
    from kn_lens.weights import set_rows

    n_layers = tiny_model.cfg.n_layers
    with pytest.raises(KnLensError, match="out of range"):
        check_neurons(tiny_model, [(n_layers, 0)])
    with pytest.raises(KnLensError, match="finite"):
        neuron_hooks(tiny_model, [(0, 0)], float("nan"))
    with pytest.raises(KnLensError, match="rows for"):
        set_rows(tiny_model, [(0, 0)], torch.zeros(2, tiny_model.cfg.d_model))
    with pytest.raises(KnLensError, match="1-based"):
        Shard.parse("3/2")
    with pytest.raises(KnLensError, match="exactly one"):
        FactBag(_FACT, ("no mask here",))
    with pytest.raises(FileNotFoundError) as info:  # still a FileNotFoundError, as before
        load_pararel(tmp_path / "lama", tmp_path / "patterns")
    assert isinstance(info.value, KnLensError)
