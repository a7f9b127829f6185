"""A number kn_lens prints must mean what it says: tampered stores, non-integer neurons, and the
other routes by which a wrong value could pass silently (issue 21)."""

from __future__ import annotations

import json

import pytest

from kn_lens.bag_scores import BagScores, PromptScores
from kn_lens.errors import KnLensError
from kn_lens.store import CHECKSUM_FIELD, JsonlStore, StoreError, read_jsonl, read_union


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


def test_a_finite_score_changed_by_hand_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "P19.jsonl"
    with JsonlStore(path) as store:
        store.append(_record("P19/0"))
        store.append(_record("P19/1"))
    lines = path.read_text().splitlines()
    assert all(f'"{CHECKSUM_FIELD}":' in line for line in lines)
    # read back without the checksum field, equal to what was stored
    assert read_union([path])["P19/1"] == _record("P19/1")
    tampered = lines[1].replace('"max":2.0', '"max":2.5', 1)
    assert tampered != lines[1]
    path.write_text(lines[0] + "\n" + tampered + "\n")
    msg = rf"{path}:2: the record was changed after kn_lens wrote it"
    with pytest.raises(StoreError, match=msg):
        read_union([path])
    with pytest.raises(StoreError, match=msg), JsonlStore(path):
        pass
    # a line from before checksums (none stored) is read as it is
    path.write_text(lines[0] + "\n" + json.dumps(_record("P19/1")) + "\n")
    assert set(read_union([path])) == {"P19/0", "P19/1"}


def test_a_record_may_not_bring_its_own_checksum(tmp_path):
    with JsonlStore(tmp_path / "P19.jsonl") as store, pytest.raises(StoreError, match="own field"):
        store.append({**_record(), CHECKSUM_FIELD: "0" * 16})


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


# ---- a full disk --------------------------------------------------------------------------------


def _enospc() -> OSError:
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_append_cut_short_by_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import os

    from kn_lens import store

    path = tmp_path / "P19.jsonl"
    real_write = os.write
    with JsonlStore(path, fsync=False) as st:
        st.append({"key": "P19/0", "v": 1})
        before = path.read_bytes()

        def half_then_full(fd, data):  # the disk fills halfway through the record
            real_write(fd, bytes(data[: len(data) // 2]))
            raise _enospc()

        monkeypatch.setattr(store.os, "write", half_then_full)
        with pytest.raises(StoreError, match=rf"^{path}: could not store the record of 'P19/1'"):
            st.append({"key": "P19/1", "v": list(range(50))})
        monkeypatch.undo()
        assert path.read_bytes() == before  # the partial line was cut away at once
        assert "P19/1" not in st
        st.append({"key": "P19/1", "v": 2})  # space again: the run goes on
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0", "P19/1"]


def test_a_torn_line_the_writer_could_not_cut_is_never_read(tmp_path, monkeypatch):
    import os

    from kn_lens import store

    path = tmp_path / "P19.jsonl"
    real_write = os.write
    with JsonlStore(path, fsync=False) as st:
        st.append({"key": "P19/0", "v": 1})

        def half_then_full(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise _enospc()

        def no_truncate(fd, size):
            raise _enospc()

        monkeypatch.setattr(store.os, "write", half_then_full)
        monkeypatch.setattr(store.os, "ftruncate", no_truncate)
        with pytest.raises(StoreError, match="torn last line is cut away"):
            st.append({"key": "P19/1", "v": list(range(50))})
        monkeypatch.undo()
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0"]  # the torn tail is ignored
    with JsonlStore(path) as st:  # and cut away by the next writer
        assert st.keys == {"P19/0"}
        st.append({"key": "P19/1", "v": 2})
    assert [r["key"] for r in read_jsonl(path)] == ["P19/0", "P19/1"]


class _FullDisk:
    """A text file whose writes stop halfway with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise _enospc()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_an_atomic_json_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    from kn_lens import store
    from kn_lens.store import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"old": 1})
    real_fdopen = os.fdopen
    monkeypatch.setattr(store.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(StoreError, match=rf"^{path}: could not write it: .*previous version"):
        write_json_atomic(path, {"new": list(range(1000))})
    new = tmp_path / "neurons.json"
    with pytest.raises(StoreError, match=rf"^{new}: could not write it: .*not created"):
        write_json_atomic(new, {"new": 1})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


def test_a_figure_on_a_full_disk_leaves_no_truncated_file(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from kn_lens import plots

    fig = go.Figure(go.Bar(x=["a"], y=[1]))
    out = tmp_path / "figures"
    first = plots.save_figure(fig, out / "modify", png=False)
    html = (out / "modify.html").read_text()
    js = (out / "plotly.min.js").read_bytes()
    assert 'src="plotly.min.js"' in html

    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise _enospc()

    monkeypatch.setattr(plots, "_write_bytes", full)
    fig.update_layout(title="changed")
    with pytest.raises(KnLensError, match=rf"^{out / 'modify.html'}: could not write the figure"):
        plots.save_figure(fig, out / "modify", png=False)
    (out / "plotly.min.js").write_bytes(js[:1000])  # a copy cut short earlier
    with pytest.raises(KnLensError, match=rf"^{out / 'plotly.min.js'}: could not write"):
        plots.save_figure(fig, out / "identify", png=False)
    monkeypatch.undo()
    assert (out / "modify.html").read_text() == html  # the old figure, whole
    assert not (out / "identify.html").exists()
    assert sorted(p.name for p in out.iterdir()) == ["modify.html", "plotly.min.js"]
    plots.save_figure(fig, out / "identify", png=False)  # the short copy is replaced
    assert (out / "plotly.min.js").read_bytes() == js
    assert first["html"] == str(out / "modify.html")


def test_neurons_json_with_non_integers_or_without_neurons_is_refused(tmp_path):
    """DIR/neurons.json: [2.7, 16.9] is not neuron (2, 16), and a file without its "neurons"
    mapping is a one-line error naming the file, not a KeyError."""
    import json

    import pytest

    from kn_lens.errors import KnLensError
    from kn_lens.rundir import NEURONS_SCHEMA, RunDir

    run = RunDir(tmp_path)
    for doc in (
        {"schema": NEURONS_SCHEMA, "neurons": {"ours": {"W01/0": [[2.7, 16.9]]}}},
        {"schema": NEURONS_SCHEMA},
    ):
        run.neurons_json.write_text(json.dumps(doc))
        with pytest.raises(KnLensError, match="neurons.json"):
            run.load_neurons()
