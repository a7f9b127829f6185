"""kn_lens.attribution: exactness against a naive integrated-gradients reference, completeness,
padding independence, input validation and the activation baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kn_lens import load_model
from kn_lens.attribution import attribute
from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION
from kn_lens.prompts import answer_token_id, encode
from tests.conftest import make_tiny_checkpoint

PROMPTS = [
    "Alice was born in [MASK] .",
    "the capital of the country is [MASK] .",
    "[MASK] is the city of Bob",
]
TARGET = "Paris"


def naive_ig(model, prompt: str, target: int, steps: int, layers=None) -> torch.Tensor:
    """One prompt, one layer and one alpha at a time, each a full forward (run_with_hooks) and its
    own backward pass. ``[layer, d_mlp]``."""
    enc = encode(model, [prompt])
    m = int(enc.mask_pos[0])
    layers = range(model.cfg.n_layers) if layers is None else layers
    out = []
    for layer in layers:
        name = f"blocks.{layer}.mlp.hook_post"
        _, cache = model.run_with_cache(
            enc.tokens, one_zero_attention_mask=enc.attention_mask, names_filter=name
        )
        a = cache[name][0, m].detach()
        grads = torch.zeros_like(a)
        for k in range(steps):
            leaf = (a * (k / steps)).clone().requires_grad_(True)

            def put(act, hook, leaf=leaf):
                act = act.clone()
                act[0, m] = leaf
                return act

            logits = model.run_with_hooks(
                enc.tokens, one_zero_attention_mask=enc.attention_mask, fwd_hooks=[(name, put)]
            )
            prob = logits[0, m].softmax(-1)[target]
            (g,) = torch.autograd.grad(prob, leaf)
            grads += g
        out.append(a * grads / steps)
    return torch.stack(out)


def prob_with_scale(model, prompt: str, target: int, layer: int, scale: float) -> float:
    enc = encode(model, [prompt])
    m = int(enc.mask_pos[0])

    def scale_mask(act, hook):
        act = act.clone()
        act[0, m] *= scale
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(
            enc.tokens,
            one_zero_attention_mask=enc.attention_mask,
            fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", scale_mask)],
        )
    return float(logits[0, m].softmax(-1)[target])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny64(tiny_ckpt: Path):
    return load_model(tiny_ckpt, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def three_layer_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny3"), n_layers=3, d_model=48, d_mlp=96, n_heads=4, seed=1
    )


def test_shape_device_dtype(tiny_model):
    scores = attribute(tiny_model, PROMPTS, TARGET, steps=4)
    assert scores.shape == (len(PROMPTS), tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.abs().max() > 0


@pytest.fixture(scope="module")
def naive32(tiny_model):
    target = answer_token_id(tiny_model, TARGET)
    return torch.stack([naive_ig(tiny_model, p, target, steps=5) for p in PROMPTS])


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_matches_naive_reference_float32(tiny_model, naive32, batch_size):
    ours = attribute(tiny_model, PROMPTS, TARGET, steps=5, batch_size=batch_size)
    for i, p in enumerate(PROMPTS):
        assert rel_err(ours[i], naive32[i]) < 1e-5, (p, rel_err(ours[i], naive32[i]))


def test_matches_naive_reference_float64_elementwise(tiny64):
    target = answer_token_id(tiny64, TARGET)
    ours = attribute(tiny64, PROMPTS, target, steps=6, batch_size=10)
    assert ours.dtype == torch.float64
    for i, p in enumerate(PROMPTS):
        ref = naive_ig(tiny64, p, target, steps=6)
        torch.testing.assert_close(ours[i], ref, rtol=1e-9, atol=1e-14)


def test_three_layers_subset_and_order(three_layer_ckpt):
    model = load_model(three_layer_ckpt, device="cpu", dtype=torch.float64)
    target = answer_token_id(model, "London")
    layers = [2, 0]
    ours = attribute(model, PROMPTS, "London", steps=4, batch_size=9, layers=layers)
    assert ours.shape == (len(PROMPTS), 2, model.cfg.d_mlp)
    full = attribute(model, PROMPTS, "London", steps=4, batch_size=13)
    torch.testing.assert_close(ours, full[:, layers], rtol=1e-10, atol=1e-15)
    for i, p in enumerate(PROMPTS):
        ref = naive_ig(model, p, target, steps=4, layers=layers)
        torch.testing.assert_close(ours[i], ref, rtol=1e-9, atol=1e-14)


def test_three_layers_float32(three_layer_ckpt):
    model = load_model(three_layer_ckpt, device="cpu")
    target = answer_token_id(model, "London")
    ours = attribute(model, PROMPTS[:2], target, steps=3, batch_size=5)
    for i, p in enumerate(PROMPTS[:2]):
        assert rel_err(ours[i], naive_ig(model, p, target, steps=3)) < 1e-5


def test_completeness_and_convergence(tiny64):
    target = answer_token_id(tiny64, TARGET)
    prompt = PROMPTS[0]
    coarse = attribute(tiny64, [prompt], target, steps=20)[0]
    fine = attribute(tiny64, [prompt], target, steps=200)[0]
    for layer in range(tiny64.cfg.n_layers):
        delta = prob_with_scale(tiny64, prompt, target, layer, 1.0) - prob_with_scale(
            tiny64, prompt, target, layer, 0.0
        )
        assert abs(delta) > 1e-6  # far above float64 noise: the check below is not vacuous
        gap20 = abs(float(coarse[layer].sum()) - delta)
        gap200 = abs(float(fine[layer].sum()) - delta)
        # left Riemann sum: the error falls like 1/m, so 10x the steps gives ~1/10 the gap
        assert gap200 < 0.15 * gap20
        assert gap20 < 0.2 * abs(delta)
        assert gap200 < 0.02 * abs(delta)


def test_padding_does_not_change_scores(tiny_model):
    short, long = (
        "[MASK] of Bob",
        "the capital city of the country where Alice was born is [MASK] .",
    )
    mid = "Alice was born in [MASK] ."
    alone = attribute(tiny_model, [mid], TARGET, steps=4)[0]
    with_others = attribute(tiny_model, [long, mid, short], TARGET, steps=4, batch_size=5)
    assert rel_err(with_others[1], alone) < 1e-5
    assert rel_err(with_others[0], attribute(tiny_model, [long], TARGET, steps=4)[0]) < 1e-5
    assert rel_err(with_others[2], attribute(tiny_model, [short], TARGET, steps=4)[0]) < 1e-5


def test_padding_exact_in_float64(tiny64):
    prompts = ["the capital city of the country where Alice was born is [MASK] .", "[MASK] of Bob"]
    both = attribute(tiny64, prompts, TARGET, steps=3, batch_size=4)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(
            both[i], attribute(tiny64, [p], TARGET, steps=3)[0], rtol=1e-10, atol=1e-15
        )


def test_bad_input_names_the_problem(tiny_model):
    with pytest.raises(ValueError, match="no mask here"):
        attribute(tiny_model, ["Alice was born in [MASK] .", "no mask here"], TARGET)
    with pytest.raises(ValueError, match=r"\[MASK\] and \[MASK\]"):
        attribute(tiny_model, ["[MASK] and [MASK] ."], TARGET)
    with pytest.raises(ValueError, match="Zorvik"):
        attribute(tiny_model, ["Alice was born in [MASK] ."], "Zorvik")
    not_a_method: Any = "gradient"  # typed Any: the run-time check, not mypy, must refuse it
    with pytest.raises(ValueError, match="method"):
        attribute(tiny_model, PROMPTS, TARGET, method=not_a_method)
    with pytest.raises(ValueError, match="layer 5"):
        attribute(tiny_model, PROMPTS, TARGET, layers=[5])
    with pytest.raises(ValueError, match="token id"):
        attribute(tiny_model, PROMPTS, 10**6)
    with pytest.raises(ValueError, match="steps"):
        attribute(tiny_model, PROMPTS, TARGET, steps=0)


def test_activation_method_equals_cache(tiny_model):
    scores = attribute(tiny_model, PROMPTS, TARGET, method="activation")
    for i, p in enumerate(PROMPTS):
        enc = encode(tiny_model, [p])
        _, cache = tiny_model.run_with_cache(enc.tokens, one_zero_attention_mask=enc.attention_mask)
        m = int(enc.mask_pos[0])
        for layer in range(tiny_model.cfg.n_layers):
            torch.testing.assert_close(
                scores[i, layer], cache[f"blocks.{layer}.mlp.hook_post"][0, m], rtol=1e-6, atol=1e-6
            )


def hook_counts(model) -> dict[str, tuple[int, int]]:
    """Hooks on each hook point (a TransformerBridge keeps some of its own)."""
    return {n: (len(hp.fwd_hooks), len(hp.bwd_hooks)) for n, hp in model.hook_dict.items()}


def test_hooks_removed_and_params_untouched(tiny_model):
    grads_before = {n: p.requires_grad for n, p in tiny_model.named_parameters()}

    class Boom(RuntimeError):
        pass

    def explode(act, hook):
        raise Boom

    hooks_before = hook_counts(tiny_model)
    with pytest.raises(Boom):
        with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", explode)]):
            attribute(tiny_model, PROMPTS[:1], TARGET, steps=2)
    assert hook_counts(tiny_model) == hooks_before
    assert {n: p.requires_grad for n, p in tiny_model.named_parameters()} == grads_before


def test_caller_hooks_still_apply(tiny_model):
    """A caller's intervention (here: layer 0's attention output zeroed) is respected."""

    def zero(act, hook):
        return torch.zeros_like(act)

    plain = attribute(tiny_model, PROMPTS[:1], TARGET, steps=3)
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero)]):
        hooked = attribute(tiny_model, PROMPTS[:1], TARGET, steps=3)
    assert not torch.allclose(plain, hooked)


def test_caller_hooks_exact_against_naive(three_layer_ckpt):
    """Under a caller's position-wise interventions (layer 0's attention output halved, a neuron of
    the last MLP silenced), the scores still equal the naive reference run under the same hooks,
    though attribution runs the scaled layer's MLP and the last block at [MASK] only."""
    model = load_model(three_layer_ckpt, device="cpu", dtype=torch.float64)
    target = answer_token_id(model, "London")

    def halve(act, hook):
        return act * 0.5

    def silence(act, hook):
        act = act.clone()
        act[..., 3] = 0.0
        return act

    caller = [("blocks.0.hook_attn_out", halve), ("blocks.2.mlp.hook_post", silence)]
    with model.hooks(fwd_hooks=caller):
        ours = attribute(model, PROMPTS, target, steps=3, batch_size=8)
        refs = [naive_ig(model, p, target, steps=3) for p in PROMPTS]
    plain = attribute(model, PROMPTS, target, steps=3, batch_size=8)
    assert not torch.allclose(ours, plain)
    assert torch.all(ours[:, 2, 3] == 0)  # the silenced neuron has no attribution
    for i in range(len(PROMPTS)):
        torch.testing.assert_close(ours[i], refs[i], rtol=1e-9, atol=1e-14)


def test_last_block_at_mask_equals_full_block(three_layer_ckpt):
    """The last block computed at [MASK] only gives the full block's output there, padding included,
    and fires the same hook points."""
    if not HAS_HOOKED_CLASSES:
        pytest.skip(f"HookedEncoder's fast path; TransformerLens {TL_VERSION} runs the bridge")
    from kn_lens.models.encoder.forward import _additive_mask, _block_at_mask

    model = load_model(three_layer_ckpt, device="cpu", dtype=torch.float64)
    enc = encode(model, PROMPTS)
    add_mask = _additive_mask(enc.attention_mask, torch.float64)
    resid = model.blocks[0](model.embed(enc.tokens, enc.token_type_ids), add_mask).detach()
    block = model.blocks[1]
    fired_full: list[str] = []
    fired_mask: list[str] = []
    names = [n for n in model.hook_dict if n.startswith("blocks.1.")]

    def record(into):
        return [(n, lambda act, hook: into.append(hook.name)) for n in names]

    with model.hooks(fwd_hooks=record(fired_full)):
        full = block(resid, add_mask)
    with model.hooks(fwd_hooks=record(fired_mask)):
        at_mask = _block_at_mask(block, resid, add_mask, enc.mask_pos)
    rows = torch.arange(len(PROMPTS))
    assert at_mask.shape == (len(PROMPTS), 1, model.cfg.d_model)
    torch.testing.assert_close(at_mask[:, 0], full[rows, enc.mask_pos], rtol=1e-12, atol=1e-12)
    assert fired_mask == fired_full


def test_works_inside_no_grad(tiny_model):
    plain = attribute(tiny_model, PROMPTS[:2], TARGET, steps=3)
    with torch.no_grad():
        inside = attribute(tiny_model, PROMPTS[:2], TARGET, steps=3)
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_bfloat16_model_is_close_to_float32(tiny_ckpt, tiny_model):
    """A bfloat16 model (an opt-in approximation) gives bfloat16 scores that track float32's: the
    alpha grid and the sums are kept in float32, so only the model's own passes round."""
    half = load_model(tiny_ckpt, device="cpu", dtype=torch.bfloat16)
    ours = attribute(half, PROMPTS, TARGET, steps=5)
    ref = attribute(tiny_model, PROMPTS, TARGET, steps=5)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours.float()).all()
    r = torch.corrcoef(torch.stack([ours.float().flatten(), ref.flatten()]))[0, 1]
    assert r > 0.99, float(r)
    for i in range(len(PROMPTS)):
        top = set(ref[i].flatten().topk(5).indices.tolist())
        assert len(top & set(ours[i].float().flatten().topk(5).indices.tolist())) >= 4


needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


@needs_cuda
def test_cuda_matches_cpu(three_layer_ckpt):
    """The same scores on a CUDA device as on the CPU (float64, so the comparison is tight), and
    the result comes back on the CPU."""
    cpu = load_model(three_layer_ckpt, device="cpu", dtype=torch.float64)
    gpu = load_model(three_layer_ckpt, device="cuda", dtype=torch.float64)
    on_cpu = attribute(cpu, PROMPTS, "London", steps=4, batch_size=7)
    on_gpu = attribute(gpu, PROMPTS, "London", steps=4, batch_size=7)
    assert on_gpu.device.type == "cpu"
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-12)
    base_gpu = attribute(gpu, PROMPTS, "London", method="activation")
    torch.testing.assert_close(
        base_gpu, attribute(cpu, PROMPTS, "London", method="activation"), rtol=1e-9, atol=1e-12
    )


def test_dtype_float32_is_the_exact_default(tiny_model):
    plain = attribute(tiny_model, PROMPTS, TARGET, steps=4)
    for dtype in (None, torch.float32, "float32"):
        same = attribute(tiny_model, PROMPTS, TARGET, steps=4, dtype=dtype)
        torch.testing.assert_close(same, plain, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16])
def test_lower_precision_tracks_float32_and_leaves_the_model_alone(tiny_model, dtype):
    """dtype=bfloat16/float16 runs the scaled passes under autocast: scores in the model's dtype
    that correlate with float32's and share their top neurons; the caller's model is untouched."""
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    ref = attribute(tiny_model, PROMPTS, TARGET, steps=5)
    ours = attribute(tiny_model, PROMPTS, TARGET, steps=5, dtype=dtype)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    r = float(torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1])
    assert r > 0.99, r
    assert rel_err(ours, ref) > 0  # it did run in lower precision
    for i in range(len(PROMPTS)):
        top = set(ref[i].flatten().topk(5).indices.tolist())
        assert len(top & set(ours[i].flatten().topk(5).indices.tolist())) >= 4
    assert tiny_model.cfg.dtype == torch.float32
    after = tiny_model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in state.items())


def test_lower_precision_keeps_caller_hooks(tiny_model):
    def halve(act, hook):
        return act * 0.5

    hooks_before = hook_counts(tiny_model)
    plain = attribute(tiny_model, PROMPTS[:1], TARGET, steps=3, dtype=torch.bfloat16)
    with tiny_model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", halve)]):
        hooked = attribute(tiny_model, PROMPTS[:1], TARGET, steps=3, dtype=torch.bfloat16)
        exact = attribute(tiny_model, PROMPTS[:1], TARGET, steps=3)
    assert not torch.allclose(plain, hooked)
    assert float(torch.corrcoef(torch.stack([hooked.flatten(), exact.flatten()]))[0, 1]) > 0.99
    assert hook_counts(tiny_model) == hooks_before


def test_activation_baseline_is_exact_in_any_dtype(tiny_model):
    ref = attribute(tiny_model, PROMPTS, TARGET, method="activation")
    ours = attribute(tiny_model, PROMPTS, TARGET, method="activation", dtype=torch.bfloat16)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.float64, torch.int8, "half"])
def test_bad_dtype_is_named(tiny_model, bad):
    with pytest.raises(ValueError, match="dtype must be None or one of float32, bfloat16"):
        attribute(tiny_model, PROMPTS[:1], TARGET, steps=2, dtype=bad)
