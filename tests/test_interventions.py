"""Suppress / amplify / read hooks: exactly the chosen neurons, exactly at [MASK], always
removed."""

from __future__ import annotations

import pytest
import torch

from kn_lens.interventions import (
    amplify,
    neuron_activations,
    neuron_hooks,
    scale_neurons,
    scaled_answer_probs,
    suppress,
)
from kn_lens.neuron import Neuron
from kn_lens.prompts import answer_token_ids, encode, mask_probs

PROMPTS = [
    "Alice was born in [MASK] .",
    "[MASK] is the capital of the country .",
    "Bob works as a [MASK] in London and Paris .",
]
NEURONS = [Neuron(0, 3), Neuron(0, 17), Neuron(1, 5)]


def _cache(model, enc):
    _, cache = model.run_with_cache(
        enc.tokens, token_type_ids=enc.token_type_ids, one_zero_attention_mask=enc.attention_mask
    )
    return cache


def _changed_entries(model, enc, ctx, layer):
    clean = _cache(model, enc)[f"blocks.{layer}.mlp.hook_post"]
    with ctx:
        hooked = _cache(model, enc)[f"blocks.{layer}.mlp.hook_post"]
    return clean, hooked


@pytest.mark.parametrize("factor", [0.0, 2.0])
def test_scale_changes_exactly_chosen_neurons_at_mask(tiny_model, factor):
    enc = encode(tiny_model, PROMPTS)
    ctx = scale_neurons(tiny_model, NEURONS, factor, positions=enc.mask_pos)
    # Layer 0 sees only its own intervention (nothing upstream changes).
    clean, hooked = _changed_entries(tiny_model, enc, ctx, 0)
    expected = clean.clone()
    for b, pos in enumerate(enc.mask_pos.tolist()):
        for idx in (3, 17):
            expected[b, pos, idx] = clean[b, pos, idx] * factor
    torch.testing.assert_close(hooked, expected)
    diff = hooked != clean
    # every changed entry is at a [MASK] position and a chosen index
    for b, p, i in diff.nonzero().tolist():
        assert p == enc.mask_pos[b].item() and i in (3, 17)
    assert diff.sum().item() > 0
    # Layer 1: the chosen neuron at [MASK] equals factor times the value it would have had given
    # the (already changed) input, i.e. the hook changed only index 5 at [MASK] on top of upstream.
    with torch.no_grad():
        with scale_neurons(tiny_model, NEURONS[:2], factor, positions=enc.mask_pos):
            upstream_only = _cache(tiny_model, enc)["blocks.1.mlp.hook_post"]
        with scale_neurons(tiny_model, NEURONS, factor, positions=enc.mask_pos):
            both = _cache(tiny_model, enc)["blocks.1.mlp.hook_post"]
    exp1 = upstream_only.clone()
    rows = torch.arange(len(enc))
    exp1[rows, enc.mask_pos, 5] = upstream_only[rows, enc.mask_pos, 5] * factor
    torch.testing.assert_close(both, exp1)


def test_suppress_and_amplify_helpers(tiny_model):
    enc = encode(tiny_model, PROMPTS)
    rows = torch.arange(len(enc))
    clean = _cache(tiny_model, enc)["blocks.0.mlp.hook_post"]
    with suppress(tiny_model, [Neuron(0, 3)], positions=enc.mask_pos):
        s = _cache(tiny_model, enc)["blocks.0.mlp.hook_post"]
    with amplify(tiny_model, [Neuron(0, 3)], positions=enc.mask_pos):
        a = _cache(tiny_model, enc)["blocks.0.mlp.hook_post"]
    assert torch.all(s[rows, enc.mask_pos, 3] == 0)
    torch.testing.assert_close(a[rows, enc.mask_pos, 3], 2 * clean[rows, enc.mask_pos, 3])
    # a non-mask position (the [CLS] token) is untouched
    torch.testing.assert_close(s[:, 0], clean[:, 0])


def test_hooks_removed_after_exception(tiny_model):
    enc = encode(tiny_model, PROMPTS)
    before = sum(len(hp.fwd_hooks) for hp in tiny_model.hook_dict.values())
    with pytest.raises(RuntimeError, match="boom"):
        with suppress(tiny_model, NEURONS, positions=enc.mask_pos):
            assert sum(len(hp.fwd_hooks) for hp in tiny_model.hook_dict.values()) > before
            raise RuntimeError("boom")
    assert sum(len(hp.fwd_hooks) for hp in tiny_model.hook_dict.values()) == before
    # and the model computes the clean answer again
    clean = _cache(tiny_model, enc)["blocks.0.mlp.hook_post"]
    rows = torch.arange(len(enc))
    assert torch.all(clean[rows, enc.mask_pos, 3] != 0)


def test_hook_rejects_wrong_batch(tiny_model):
    enc = encode(tiny_model, PROMPTS)
    hooks = neuron_hooks(tiny_model, NEURONS, 0.0, positions=enc.mask_pos[:2])
    with pytest.raises(ValueError, match="build the hooks per batch"):
        tiny_model.run_with_hooks(
            enc.tokens, one_zero_attention_mask=enc.attention_mask, fwd_hooks=hooks
        )


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_factor_is_refused(tiny_model, factor):
    before = sum(len(hp.fwd_hooks) for hp in tiny_model.hook_dict.values())
    with pytest.raises(ValueError, match=f"factor must be a finite number, got {factor}"):
        neuron_hooks(tiny_model, NEURONS, factor)
    with pytest.raises(ValueError, match="finite"), amplify(tiny_model, NEURONS, factor=factor):
        pass
    assert sum(len(hp.fwd_hooks) for hp in tiny_model.hook_dict.values()) == before


def test_bad_neuron_is_named(tiny_model):
    with pytest.raises(ValueError, match="L5.N0"):
        neuron_hooks(tiny_model, [Neuron(5, 0)], 0.0)
    with pytest.raises(ValueError, match=r"index must be in \[0, 64\)"):
        neuron_hooks(tiny_model, [(0, 64)], 0.0)


def test_scaled_probs_match_manual_hooks_and_batching(tiny_model):
    enc = encode(tiny_model, PROMPTS, answers=["Paris", "Berlin", "doctor"])
    targets = answer_token_ids(tiny_model, ["Paris", "Berlin", "doctor"])
    manual = mask_probs(
        tiny_model,
        enc,
        targets,
        fwd_hooks=neuron_hooks(tiny_model, NEURONS, 0.0, positions=enc.mask_pos),
    )
    for bs in (1, 2, 64):
        got = scaled_answer_probs(tiny_model, enc, NEURONS, 0.0, batch_size=bs)
        torch.testing.assert_close(got, manual.cpu())
    clean = scaled_answer_probs(tiny_model, enc, NEURONS, None)
    torch.testing.assert_close(clean, mask_probs(tiny_model, enc, targets).cpu())
    assert not torch.allclose(clean, manual.cpu())


def test_neuron_activations_reads_mask_position(tiny_model):
    enc = encode(tiny_model, PROMPTS)
    cache = _cache(tiny_model, enc)
    neurons = [Neuron(1, 5), Neuron(0, 3), Neuron(1, 60), Neuron(0, 3)]
    acts = neuron_activations(tiny_model, enc, neurons, batch_size=2)
    assert acts.shape == (3, 4)
    rows = torch.arange(len(enc))
    for j, n in enumerate(neurons):
        ref = cache[f"blocks.{n.layer}.mlp.hook_post"][rows, enc.mask_pos, n.index]
        torch.testing.assert_close(acts[:, j], ref)
    # prompts as strings work too, and an intervention upstream is visible
    sup = neuron_activations(
        tiny_model,
        PROMPTS,
        [Neuron(0, 3)],
        fwd_hooks=neuron_hooks(tiny_model, [Neuron(0, 3)], 0.0, positions=enc.mask_pos),
    )
    assert torch.all(sup == 0)
    assert neuron_activations(tiny_model, enc, []).shape == (3, 0)
