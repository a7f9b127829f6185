"""A number kn_lens prints must mean what it says: tampered stores, non-integer neurons, and the
other routes by which a wrong value could pass silently (issue 21)."""

from __future__ import annotations

import json

import pytest

from kn_lens.bag_scores import BagScores, PromptScores
from kn_lens.errors import KnLensError
from kn_lens.store import JsonlStore, StoreError, read_jsonl, read_union


def _record(key: str = "P19/0", **changes) -> dict:
    rec = BagScores(
        key,
        "P19",
        0,
        "Paris",
        2,
        3,
        8,
        scores={
            "ig": [PromptScores(2.0, ((0, 1, 2.0), (2, 5, 0.5))), PromptScores(1.0, ((1, 3, 1.0),))]
        },
    ).to_dict()
    rec.update(changes)
    return rec


def _store(tmp_path, *lines: str):
    path = tmp_path / "P19.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_clean_record_round_trips_and_knows_its_line(tmp_path):
    path = _store(tmp_path, json.dumps(_record("P19/0")), json.dumps(_record("P19/1")))
    recs = read_union([path])
    assert recs["P19/1"].source == f"{path}:2"
    bag = BagScores.from_dict(recs["P19/1"])
    assert bag.scores["ig"][0].neurons == ((0, 1, 2.0), (2, 5, 0.5))


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_stored_score_names_the_file_and_line(tmp_path, bad):
    good = json.dumps(_record("P19/0"))
    tampered = json.dumps(_record("P19/1")).replace('"max": 2.0', f'"max": {bad}', 1)
    assert bad in tampered
    path = _store(tmp_path, good, tampered)
    msg = rf"{path}:2: holds the number {bad}, which is not finite"
    with pytest.raises(StoreError, match=msg):
        read_jsonl(path)
    with pytest.raises(StoreError, match=msg):
        read_union([path])
    # Not taken for a torn last line, and not cut away by the writer's repair either.
    with pytest.raises(StoreError, match=msg), JsonlStore(path):
        pass
    assert path.read_text().count("\n") == 2


def test_a_non_finite_score_in_a_record_given_directly_is_refused():
    rec = _record()
    rec["scores"]["ig"][1]["neurons"][0][2] = float("nan")
    with pytest.raises(KnLensError, match=r"'P19/0' is malformed: score nan is not finite"):
        BagScores.from_dict(rec)
    rec = _record()
    rec["scores"]["ig"][0]["max"] = float("inf")
    with pytest.raises(KnLensError, match="max inf is not finite"):
        BagScores.from_dict(rec)


def test_a_record_without_scores_names_the_file_and_line(tmp_path):
    rec = _record("P19/1")
    del rec["scores"]
    path = _store(tmp_path, json.dumps(_record("P19/0")), json.dumps(rec))
    recs = read_union([path])
    with pytest.raises(
        KnLensError, match=rf"^{path}:2: attribution record 'P19/1' has no 'scores'"
    ):
        BagScores.from_dict(recs["P19/1"])
    del rec["n_layers"]
    rec["scores"] = {}
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(KnLensError, match=rf"^{path}:1: .* has no 'n_layers'"):
        BagScores.from_dict(read_jsonl(path)[0])


@pytest.mark.parametrize("bad", [[2.7, 16.9, 1.0], [True, 1, 1.0], ["2", "1", 1.0]])
def test_a_stored_neuron_that_is_not_a_pair_of_integers_is_refused(tmp_path, bad):
    rec = _record("P19/0")
    rec["scores"]["ig"][0]["neurons"][1] = bad
    path = _store(tmp_path, json.dumps(rec))
    with pytest.raises(KnLensError, match=rf"^{path}:1: .*layer and index must be integers"):
        BagScores.from_dict(read_jsonl(path)[0])


def test_a_record_without_its_key_names_the_line(tmp_path):
    path = _store(tmp_path, json.dumps(_record("P19/0")), json.dumps({"scores": {}}))
    with pytest.raises(StoreError, match=rf"{path}:2: record without a string 'key' field"):
        read_union([path])


# ---- torch.inference_mode() ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_model():
    import kn_lens

    return kn_lens.load_model("default")


@pytest.mark.parametrize("method", ["ig", "grad_x_act", "activation"])
def test_attribute_inside_inference_mode_gives_the_same_scores(default_model, method):
    import torch

    import kn_lens

    bag = kn_lens.data.default_facts()[0]
    prompts = bag.prompts[:2]
    base = "zero" if method == "activation" else "mean"
    outside = kn_lens.attribute(
        default_model, prompts, bag.object, steps=3, method=method, baseline=base
    )
    with torch.inference_mode():
        inside = kn_lens.attribute(
            default_model, prompts, bag.object, steps=3, method=method, baseline=base
        )
        # A baseline tensor made under inference mode works too.
        acts = kn_lens.attribute(default_model, prompts, bag.object, method="activation")
        with_tensor = kn_lens.attribute(
            default_model, prompts, bag.object, steps=3, baseline=acts.mean(0)
        )
    assert torch.equal(inside, outside)
    acts_out = kn_lens.attribute(default_model, prompts, bag.object, method="activation")
    assert torch.equal(acts, acts_out)
    ref = kn_lens.attribute(default_model, prompts, bag.object, steps=3, baseline=acts_out.mean(0))
    assert torch.equal(with_tensor, ref)


def test_find_knowledge_neurons_inside_inference_mode(default_model):
    import torch

    import kn_lens

    bag = kn_lens.data.default_facts()[0]
    outside = kn_lens.find_knowledge_neurons(default_model, bag)
    with torch.inference_mode():
        inside = kn_lens.find_knowledge_neurons(default_model, bag)
    assert inside == outside


def test_a_decoder_inside_inference_mode(tmp_path):
    import torch

    import kn_lens
    from tests.models.conftest import make_decoder_checkpoint

    model = kn_lens.load_model(str(make_decoder_checkpoint(tmp_path / "gpt2", "gpt2")))
    prompts = ["the capital of France is", "Paris is the capital of"]
    outside = kn_lens.attribute(model, prompts, " Paris", steps=3)
    with torch.inference_mode():
        inside = kn_lens.attribute(model, prompts, " Paris", steps=3)
    assert torch.equal(inside, outside)


def test_a_model_loaded_inside_inference_mode_is_refused_with_what_to_do(tmp_path):
    import torch

    import kn_lens
    from tests.models.conftest import make_decoder_checkpoint

    folder = make_decoder_checkpoint(tmp_path / "gpt2", "gpt2")
    with torch.inference_mode():
        model = kn_lens.load_model(str(folder))
    if not any(p.is_inference() for p in model.parameters()):
        pytest.skip("this loader makes normal tensors even under inference mode")
    with pytest.raises(KnLensError, match="load the model outside inference mode"):
        kn_lens.attribute(model, ["the capital of France is"], " Paris", steps=2)
