"""kn_lens.weights: typed W_out row edits that restore exactly and fail atomically."""

from __future__ import annotations

import pytest
import torch

from kn_lens import weights
from kn_lens.neuron import Neuron
from kn_lens.weights import RowEdit, add_to_rows, edit_rows, read_value_vectors, set_rows, zero_rows

NEURONS = [Neuron(0, 3), Neuron(1, 10), Neuron(0, 40), Neuron(1, 63)]


def _state(model) -> dict[str, torch.Tensor]:
    """The state dict, and each block's W_out under its TransformerLens name (a TransformerBridge's
    state dict uses the Hugging Face names)."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for layer in range(model.cfg.n_layers):
        out[f"blocks.{layer}.mlp.W_out"] = model.blocks[layer].mlp.W_out.detach().clone()
    return out


def _assert_same_state(model, before: dict[str, torch.Tensor]) -> None:
    after = _state(model)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"parameters changed: {changed}"


def test_read_value_vectors_returns_copies_of_rows(tiny_model):
    v = read_value_vectors(tiny_model, NEURONS)
    assert v.shape == (len(NEURONS), tiny_model.cfg.d_model)
    for k, n in enumerate(NEURONS):
        assert torch.equal(v[k], tiny_model.blocks[n.layer].mlp.W_out[n.index])
    v.add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(v[0], tiny_model.blocks[0].mlp.W_out[3])


def test_zero_rows_changes_only_those_rows_and_restores_bit_for_bit(tiny_model):
    before = _state(tiny_model)
    param = tiny_model.blocks[0].mlp.W_out
    ptr = param.data_ptr()
    handle = zero_rows(tiny_model, NEURONS)
    assert isinstance(handle, RowEdit) and handle.active
    for layer in range(2):
        w = tiny_model.blocks[layer].mlp.W_out
        for i in range(w.shape[0]):
            row_before = before[f"blocks.{layer}.mlp.W_out"][i]
            if Neuron(layer, i) in NEURONS:
                assert torch.count_nonzero(w[i]) == 0
            else:
                assert torch.equal(w[i], row_before)
    assert tiny_model.blocks[0].mlp.W_out.data_ptr() == ptr == param.data_ptr()  # in place
    handle.restore()
    assert not handle.active
    _assert_same_state(tiny_model, before)
    handle.restore()  # second restore is a no-op
    _assert_same_state(tiny_model, before)


def test_context_manager_restores_even_on_error(tiny_model):
    before = _state(tiny_model)
    with pytest.raises(KeyError):
        with zero_rows(tiny_model, NEURONS[:2]):
            assert torch.count_nonzero(tiny_model.blocks[0].mlp.W_out[3]) == 0
            raise KeyError("boom")
    _assert_same_state(tiny_model, before)


def test_add_to_rows_adds_scaled_vector_per_row(tiny_model):
    before = _state(tiny_model)
    d = tiny_model.cfg.d_model
    vec = torch.randn(d, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([0.5, -2.0, 3.0, 0.0])
    with add_to_rows(tiny_model, NEURONS, vec, scale):
        for k, n in enumerate(NEURONS):
            old = before[f"blocks.{n.layer}.mlp.W_out"][n.index]
            torch.testing.assert_close(
                tiny_model.blocks[n.layer].mlp.W_out[n.index], old + scale[k] * vec
            )
    _assert_same_state(tiny_model, before)
    per_row = torch.randn(len(NEURONS), d, generator=torch.Generator().manual_seed(2))
    with add_to_rows(tiny_model, NEURONS, per_row, 2.0):
        n = NEURONS[1]
        torch.testing.assert_close(
            tiny_model.blocks[n.layer].mlp.W_out[n.index],
            before[f"blocks.{n.layer}.mlp.W_out"][n.index] + 2 * per_row[1],
        )
    _assert_same_state(tiny_model, before)


def test_set_rows_and_nested_edits_restore_in_reverse_order(tiny_model):
    before = _state(tiny_model)
    vals = torch.full((2, tiny_model.cfg.d_model), 7.0)
    with set_rows(tiny_model, NEURONS[:2], vals):
        assert torch.all(tiny_model.blocks[0].mlp.W_out[3] == 7.0)
        with zero_rows(tiny_model, NEURONS[:3]):
            assert torch.all(tiny_model.blocks[0].mlp.W_out[3] == 0.0)
        assert torch.all(tiny_model.blocks[0].mlp.W_out[3] == 7.0)
    _assert_same_state(tiny_model, before)


def test_out_of_order_restore_is_refused(tiny_model):
    before = _state(tiny_model)
    first = add_to_rows(tiny_model, NEURONS[:1], torch.ones(tiny_model.cfg.d_model))
    second = zero_rows(tiny_model, NEURONS[:1])
    with pytest.raises(RuntimeError, match="changed since this edit"):
        first.restore()
    second.restore()
    first.restore()
    _assert_same_state(tiny_model, before)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty neuron set"),
        ([Neuron(2, 0)], r"L2\.N0.*layer must be in \[0, 2\)"),
        ([Neuron(-1, 0)], "out of range"),
        ([Neuron(0, 64)], r"L0\.N64.*index must be in \[0, 64\)"),
        ([Neuron(0, 1), Neuron(0, 1)], "more than once"),
        ([(0, "x")], "not a \\(layer, index\\) pair"),
        ([(0, 1, 2)], "not a \\(layer, index\\) pair"),
    ],
)
def test_bad_neurons_fail_clearly_and_change_nothing(tiny_model, bad, match):
    before = _state(tiny_model)
    for fn in (
        lambda: zero_rows(tiny_model, bad),
        lambda: add_to_rows(tiny_model, bad, torch.ones(tiny_model.cfg.d_model)),
        lambda: read_value_vectors(tiny_model, bad),
    ):
        with pytest.raises(ValueError, match=match):
            fn()
    _assert_same_state(tiny_model, before)


def test_shape_mismatch_fails_clearly(tiny_model):
    with pytest.raises(ValueError, match="rows for 4 neurons"):
        add_to_rows(tiny_model, NEURONS, torch.ones(3, tiny_model.cfg.d_model))
    with pytest.raises(ValueError, match="scale has 2 entries"):
        add_to_rows(tiny_model, NEURONS, torch.ones(tiny_model.cfg.d_model), [1.0, 2.0])


def test_exception_halfway_through_edit_leaves_nothing_changed(tiny_model):
    before = _state(tiny_model)
    calls = []

    def fn(n, v):
        calls.append(n)
        if len(calls) == 3:
            raise RuntimeError("failure on the third row")
        return v * 10

    with pytest.raises(RuntimeError, match="third row"):
        edit_rows(tiny_model, NEURONS, fn)
    assert len(calls) == 3  # two rows were written before the failure
    _assert_same_state(tiny_model, before)


def test_exception_in_write_halfway_leaves_nothing_changed(tiny_model, monkeypatch):
    before = _state(tiny_model)
    real_write = weights._write_row
    count = {"n": 0}

    def flaky_write(model, n, row):
        count["n"] += 1
        if count["n"] in (3, 6):  # third row of each call
            raise OSError("write failed")
        real_write(model, n, row)

    monkeypatch.setattr(weights, "_write_row", flaky_write)
    with pytest.raises(OSError):
        zero_rows(tiny_model, NEURONS)
    with pytest.raises(OSError):
        add_to_rows(tiny_model, NEURONS, torch.ones(tiny_model.cfg.d_model), 5.0)
    assert count["n"] == 6
    _assert_same_state(tiny_model, before)


def test_bad_new_row_shape_rolls_back(tiny_model):
    before = _state(tiny_model)
    rows = iter([torch.zeros(tiny_model.cfg.d_model), torch.zeros(3)])
    with pytest.raises(ValueError, match="must be a \\[32\\] tensor"):
        edit_rows(tiny_model, NEURONS[:2], lambda n, v: next(rows))
    _assert_same_state(tiny_model, before)


def _assert_same_bits(model, before: dict[str, torch.Tensor]) -> None:
    changed = [k for k, v in _state(model).items() if not weights.same_bits(before[k], v)]
    assert not changed, f"parameters changed: {changed}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": float("nan")}, "scale holds a non-finite value"),
        ({"scale": float("inf")}, "scale holds a non-finite value"),
        ({"scale": [1.0, float("-inf")]}, r"scale holds a non-finite value \(-inf at index \(1,\)"),
        ({"vector": "nan"}, r"vector holds a non-finite value \(nan at index \(5,\)"),
    ],
)
def test_non_finite_edit_is_refused_before_anything_changes(tiny_model, kwargs, match):
    # The reproduction: add_to_rows(model, [(0, 1)], torch.ones(d), scale=nan).
    d = tiny_model.cfg.d_model
    vector = torch.ones(d)
    if kwargs.pop("vector", None) == "nan":
        vector[5] = float("nan")
    neurons = [(0, 1), (1, 2)] if isinstance(kwargs.get("scale"), list) else [(0, 1)]
    before = _state(tiny_model)
    with pytest.raises(ValueError, match=match):
        add_to_rows(tiny_model, neurons, vector, **kwargs)
    _assert_same_bits(tiny_model, before)


def test_set_rows_and_edit_rows_refuse_introducing_nan(tiny_model):
    d = tiny_model.cfg.d_model
    before = _state(tiny_model)
    values = torch.zeros(2, d)
    values[1, 0] = float("nan")
    with pytest.raises(ValueError, match="values holds a non-finite value"):
        set_rows(tiny_model, [(0, 1), (1, 2)], values)
    with pytest.raises(ValueError, match=r"new row for neuron L1\.N2 holds a non-finite value"):
        edit_rows(tiny_model, [(0, 1), (1, 2)], lambda n, v: v * (float("inf") if n.layer else 1))
    _assert_same_bits(tiny_model, before)


def test_row_holding_nan_restores_exactly(tiny_model):
    # A NaN (and a -0.0) written by other means: an edit may carry them along, and the undo
    # compares bit patterns, so restore works and puts back exactly those bits.
    # The model is shared by the whole session: the row's own values are put back at the end.
    d = tiny_model.cfg.d_model
    row = tiny_model.blocks[0].mlp.W_out.data[1]
    original = row.clone()
    try:
        with torch.no_grad():
            row[0], row[1] = float("nan"), -0.0
        before = _state(tiny_model)
        edit = add_to_rows(tiny_model, [(0, 1)], torch.ones(d), scale=0.5)
        assert torch.isnan(tiny_model.blocks[0].mlp.W_out[1, 0])
        edit.restore()  # NaN != NaN, yet the row still holds what the edit wrote
        assert not edit.active
        _assert_same_bits(tiny_model, before)
        with zero_rows(tiny_model, [(0, 1)]):
            assert float(tiny_model.blocks[0].mlp.W_out[1].detach().abs().sum()) == 0.0
        _assert_same_bits(tiny_model, before)
        assert str(tiny_model.blocks[0].mlp.W_out[1, 1].item()) == "-0.0"
    finally:
        with torch.no_grad():
            row.copy_(original)
    assert torch.isfinite(tiny_model.blocks[0].mlp.W_out).all()


def test_same_bits_tells_signed_zeros_and_nans_apart():
    nan = torch.tensor([float("nan")])
    assert weights.same_bits(nan, nan.clone())
    assert not weights.same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not weights.same_bits(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert weights.same_bits(torch.tensor([1, 2]), torch.tensor([1, 2]))


def test_a_row_changed_inside_the_block_keeps_the_callers_exception(tiny_model):
    """Issue 21: the caller changes a row kn_lens edited, then raises inside the block. The
    caller's exception comes out (with a note naming the row), every other row is restored, and
    the changed row is left as the caller made it until restore(force=True)."""
    before = _state(tiny_model)
    row = tiny_model.blocks[0].mlp.W_out
    with pytest.raises(KeyError, match="the caller's") as info:
        with zero_rows(tiny_model, NEURONS) as edit:
            with torch.no_grad():
                row[3] += 1.0  # NEURONS[0] = L0.N3
            raise KeyError("the caller's")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    if hasattr(info.value, "add_note"):
        assert "L0.N3" in notes and "restore(force=True)" in notes
        assert "L1.N10" not in notes
    assert edit.active and edit.changed() == [Neuron(0, 3)]
    for n in NEURONS[1:]:  # restored
        assert torch.equal(tiny_model.blocks[n.layer].mlp.W_out[n.index], before[_key(n)][n.index])
    assert torch.all(row[3] == 1.0)  # the caller's change, kept
    edit.restore(force=True)
    assert not edit.active
    _assert_same_state(tiny_model, before)


def test_a_row_changed_inside_the_block_is_named_on_a_normal_exit(tiny_model):
    before = _state(tiny_model)
    with pytest.raises(weights.RestoreError, match=r"L1\.N10 changed inside the `with` block"):
        with add_to_rows(tiny_model, NEURONS[:2], torch.ones(tiny_model.cfg.d_model)) as edit:
            with torch.no_grad():
                tiny_model.blocks[1].mlp.W_out[10] *= 2
    assert isinstance(edit, RowEdit) and edit.changed() == [Neuron(1, 10)]
    assert torch.equal(tiny_model.blocks[0].mlp.W_out[3], before["blocks.0.mlp.W_out"][3])
    edit.restore(force=True)
    _assert_same_state(tiny_model, before)


def test_a_failing_restore_keeps_the_callers_exception(tiny_model, monkeypatch):
    before = _state(tiny_model)
    edit = zero_rows(tiny_model, NEURONS[:2])

    def broken(*args, **kwargs):
        raise OSError("cannot write")

    monkeypatch.setattr(weights, "_write_rows_atomic", broken)
    with pytest.raises(ZeroDivisionError):
        with edit:
            1 / 0  # noqa: B018
    monkeypatch.undo()
    assert edit.active
    edit.restore()
    _assert_same_state(tiny_model, before)


def _key(n: Neuron) -> str:
    return f"blocks.{n.layer}.mlp.W_out"
