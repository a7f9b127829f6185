"""Decoder attribution: the cached partial forward equals a naive reference (one full forward and
backward per layer and step), on tiny GPT-2-style, Llama-style and GPT-NeoX-style (parallel
attention and MLP) random HookedTransformers."""

from __future__ import annotations

import pytest
import torch

from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION

if not HAS_HOOKED_CLASSES:  # these tests build HookedTransformers from configs
    pytest.skip(
        f"TransformerLens {TL_VERSION} has no HookedTransformer (the bridge's decoder tests: "
        "tests/models/test_bridge.py)",
        allow_module_level=True,
    )
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from kn_lens.attribution import attribute
from kn_lens.models.decoder import EncodedDecoderPrompts, answer_logprob, encode_decoder, next_token
from kn_lens.models.decoder.forward import joins_after_block

from ..word_tokenizer import save_word_tokenizer

VOCAB = 40


def tiny(style: str, dtype: torch.dtype, n_layers: int = 3, **extra) -> HookedTransformer:
    common = dict(
        n_layers=n_layers,
        d_model=32,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        d_vocab=VOCAB,
        d_mlp=48,
        dtype=dtype,
        device="cpu",
        seed=0,
        **extra,
    )
    if style == "gpt2":
        cfg = HookedTransformerConfig(act_fn="gelu_new", normalization_type="LN", **common)
    elif style == "neox":  # parallel attention and MLP: rows run all of their block (fallback)
        cfg = HookedTransformerConfig(
            act_fn="gelu",
            normalization_type="LN",
            parallel_attn_mlp=True,
            positional_embedding_type="rotary",
            rotary_dim=4,
            **common,
        )
    else:
        cfg = HookedTransformerConfig(
            act_fn="silu",
            normalization_type="RMS",
            gated_mlp=True,
            n_key_value_heads=2,
            positional_embedding_type="rotary",
            rotary_dim=8,
            **common,
        )
    model = HookedTransformer(cfg)
    with torch.no_grad():  # larger weights than the default init, so probabilities move
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model.eval()
    return model


def naive_ig(
    model, prompt: list[int], answer: list[int], layer: int, steps: int, extra: tuple = ()
) -> torch.Tensor:
    """One full unpadded forward and backward per step, scaling hook_post at the last prompt
    position (after the hooks in ``extra``); p(answer) is the product of the teacher-forced token
    probabilities."""
    tokens = torch.tensor([prompt + answer[:-1]])
    read = len(prompt) - 1
    name = f"blocks.{layer}.mlp.hook_post"
    store = {}
    model.run_with_hooks(
        tokens, fwd_hooks=[*extra, (name, lambda t, hook: store.update(a=t[0, read]))]
    )
    clean = store["a"].detach()
    total = torch.zeros_like(clean)
    for k in range(steps):
        x = (clean * (k / steps)).clone().requires_grad_(True)

        def put(t, hook, x=x):
            t = t.clone()
            t[0, read] = x
            return t

        logits = model.run_with_hooks(tokens, fwd_hooks=[*extra, (name, put)])
        logp = logits[0].log_softmax(-1)
        p = torch.exp(sum(logp[read + i, a] for i, a in enumerate(answer)))
        (g,) = torch.autograd.grad(p, x)
        total += g
    return clean * total / steps


PROMPTS = [[1, 5, 7, 9, 3], [2, 8, 4], [6, 11, 12, 13, 14, 15, 16]]


@pytest.mark.parametrize("style", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("answer", [[17], [17, 21, 23]])
def test_ig_equals_naive_reference(style, dtype, tol, answer):
    model = tiny(style, dtype)
    steps = 5
    got = attribute(model, PROMPTS, answer, steps=steps, batch_size=7)
    assert got.shape == (3, 3, 48) and got.dtype == dtype
    want = torch.stack(
        [
            torch.stack([naive_ig(model, p, answer, layer, steps) for layer in range(3)])
            for p in PROMPTS
        ]
    )
    scale = want.abs().max()
    assert scale > 1e-12  # not all zero: the comparison is relative to it
    assert (got - want).abs().max() <= tol * scale, ((got - want).abs().max(), scale)


def test_layers_subset_and_batch_size_do_not_change_scores():
    model = tiny("llama", torch.float64)
    a = attribute(model, PROMPTS, [17, 21], steps=3, batch_size=64)
    b = attribute(model, PROMPTS, [17, 21], steps=3, batch_size=2, layers=[2, 0])
    assert torch.allclose(b[:, 0], a[:, 2], rtol=1e-10, atol=1e-12)
    assert torch.allclose(b[:, 1], a[:, 0], rtol=1e-10, atol=1e-12)


def test_activation_method_is_hook_post_at_read_position():
    model = tiny("gpt2", torch.float64)
    got = attribute(model, PROMPTS, [17, 21], method="activation")
    for i, p in enumerate(PROMPTS):
        _, cache = model.run_with_cache(torch.tensor([p + [17]]))
        for layer in range(3):
            want = cache[f"blocks.{layer}.mlp.hook_post"][0, len(p) - 1]
            assert torch.allclose(got[i, layer], want, atol=1e-12)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_answer_logprob_padded_bag_equals_unpadded(style):
    model = tiny(style, torch.float64)
    answers = [[17], [17, 21, 23], [30, 31]]
    enc = encode_decoder(model, PROMPTS, answers)
    got = answer_logprob(model, enc)
    top = next_token(model, enc)
    for i, (p, a) in enumerate(zip(PROMPTS, answers, strict=True)):
        logp = model(torch.tensor([p + a[:-1]]))[0].log_softmax(-1)
        want = sum(logp[len(p) - 1 + k, t] for k, t in enumerate(a))
        assert torch.allclose(got[i], want.detach(), atol=1e-10)
        assert int(top[i]) == int(logp[len(p) - 1].argmax())


def test_hooks_fire_and_change_the_answer_probability():
    model = tiny("gpt2", torch.float64)
    enc = encode_decoder(model, PROMPTS, [17, 21])
    zero = [("blocks.1.mlp.hook_post", lambda t, hook: t * 0)]
    assert not torch.allclose(
        answer_logprob(model, enc), answer_logprob(model, enc, fwd_hooks=zero)
    )


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<bos>", "the", "capital", "of", "France", "is", "Paris", "New", "York"]
    folder = tmp_path_factory.mktemp("tok")
    save_word_tokenizer(folder, words, bos="<bos>", pad="<unk>")
    fast = PreTrainedTokenizerFast.from_pretrained(folder)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_vocab=len(words),
        d_mlp=32,
        act_fn="gelu",
        seed=0,
        normalization_type="LN",
        device="cpu",
    )
    return HookedTransformer(cfg, tokenizer=fast)


def test_string_prompts_bos_and_answer_tokens(word_model):
    model = word_model
    enc = encode_decoder(model, ["the capital of France is", "France is"], "New York")
    bos = model.tokenizer.bos_token_id
    ids = model.tokenizer.convert_tokens_to_ids
    assert enc.tokens.shape == (2, 6 + 1)
    assert enc.tokens[0].tolist() == [bos, *ids(["the", "capital", "of", "France", "is", "New"])]
    assert enc.attention_mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert enc.answer_ids.tolist() == [ids(["New", "York"])] * 2
    assert enc.read_pos.tolist() == [5, 5]
    scores = attribute(model, ["the capital of France is", "France is"], "New York", steps=2)
    assert scores.shape == (2, 2, 32)


def test_errors_name_the_bad_input(word_model):
    model = word_model
    with pytest.raises(ValueError, match=r"prompt 1 .*\[MASK\]"):
        encode_decoder(model, ["France is", "the capital of [MASK] is"], "Paris")
    with pytest.raises(ValueError, match="answer .* empty"):
        encode_decoder(model, ["France is"], "  ")
    with pytest.raises(ValueError, match="answer is empty|has no tokens"):
        attribute(model, [[1, 2]], [])
    with pytest.raises(ValueError, match="layer 5"):
        attribute(model, ["France is"], "Paris", layers=[5])


def test_rows_skip_their_block_where_the_mlp_allows_it():
    """gpt2/llama take the join-after-block path, neox (parallel attention and MLP) the full-block
    fallback; the naive-reference test above covers all three."""
    assert joins_after_block(tiny("gpt2", torch.float64))
    assert joins_after_block(tiny("llama", torch.float64))
    assert not joins_after_block(tiny("neox", torch.float64))


@pytest.mark.parametrize("style", ["gpt2", "llama", "neox"])
def test_callers_hooks_fire_during_attribution(style):
    """A position-wise hook the caller attached applies inside attribution as in a full forward."""
    model = tiny(style, torch.float64)
    half = [
        ("blocks.1.mlp.hook_post", lambda t, hook: t * 0.5),
        ("blocks.2.hook_resid_pre", lambda t, hook: t * 1.5),
    ]
    with model.hooks(fwd_hooks=half):
        got = attribute(model, PROMPTS[:2], [17, 21], steps=3, batch_size=5)
    plain = attribute(model, PROMPTS[:2], [17, 21], steps=3, batch_size=5)
    want = torch.stack(
        [
            torch.stack(
                [naive_ig(model, p, [17, 21], layer, 3, extra=tuple(half)) for layer in range(3)]
            )
            for p in PROMPTS[:2]
        ]
    )
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-9 * scale
    assert (got - plain).abs().max() > 1e-3 * scale  # the hooks did change the scores


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_completeness(style):
    """Scores of a layer add up to p(answer | a) - p(answer | 0), the scaling at the read position
    of that layer, up to the left Riemann sum's O(1/m) error: the error shrinks about 8x from
    m = 8 to m = 64."""
    model = tiny(style, torch.float64)
    answer = [17, 21]
    enc = encode_decoder(model, PROMPTS, answer)
    read = enc.prompt_width - 1
    p_clean = answer_logprob(model, enc).exp()
    gaps = []
    for layer in range(3):

        def zero(t, hook):
            t = t.clone()
            t[:, read] = 0
            return t

        p_zero = answer_logprob(model, enc, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", zero)])
        gaps.append(p_clean - p_zero.exp())
    gap = torch.stack(gaps, dim=1)  # [prompt, layer]
    assert gap.abs().max() > 1e-3 * p_clean.max()  # the scaling moves p: a real check
    err = {
        m: (attribute(model, PROMPTS, answer, steps=m).sum(-1) - gap).abs().max() for m in (8, 64)
    }
    assert err[64] < err[8] / 4, err
    assert err[64] < 0.25 * gap.abs().max(), err  # these weights are far from linear


def test_encoded_prompts_shapes_are_checked():
    """jaxtyping checks the dataclass's shapes at runtime (pyproject's --jaxtyping-packages)."""
    enc = encode_decoder(tiny("gpt2", torch.float32), PROMPTS, [17, 21])
    with pytest.raises(Exception, match="(?i)shape|type"):
        EncodedDecoderPrompts(
            enc.tokens,
            enc.attention_mask[:, :-1],
            enc.read_pos,
            enc.answer_ids,
            enc.answer_mask,
            enc.answer_pos,
        )


def test_bad_method_and_steps():
    model = tiny("gpt2", torch.float32)
    with pytest.raises(ValueError, match="unknown method 'grad'"):
        attribute(model, PROMPTS, [17], method="grad")
    with pytest.raises(ValueError, match="steps"):
        attribute(model, PROMPTS, [17], steps=0)


def test_logit_soft_cap_is_applied():
    """Gemma-style ``output_logits_soft_cap``: the partial forward ends as the model's does."""
    model = tiny("gpt2", torch.float64, output_logits_soft_cap=2.0)
    got = attribute(model, PROMPTS[:2], [17, 21], steps=3)
    want = torch.stack(
        [
            torch.stack([naive_ig(model, p, [17, 21], layer, 3) for layer in range(3)])
            for p in PROMPTS[:2]
        ]
    )
    assert (got - want).abs().max() <= 1e-9 * want.abs().max()
    uncapped = attribute(tiny("gpt2", torch.float64), PROMPTS[:2], [17, 21], steps=3)
    assert (uncapped - want).abs().max() > 1e-3 * want.abs().max()  # the cap matters here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_cuda_matches_cpu_and_the_naive_reference(style):
    """On a CUDA device the cached partial forward gives the CPU's scores (float64, tight) and
    the naive reference's; the scores come back on the CPU."""
    cpu = tiny(style, torch.float64)
    gpu = tiny(style, torch.float64).to("cuda")
    answer = [17, 21]
    on_cpu = attribute(cpu, PROMPTS, answer, steps=4, batch_size=5)
    on_gpu = attribute(gpu, PROMPTS, answer, steps=4, batch_size=5)
    assert on_gpu.device.type == "cpu"
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-12)
    want = torch.stack(
        [torch.stack([naive_ig(gpu, p, answer, layer, 4) for layer in range(3)]) for p in PROMPTS]
    ).cpu()
    assert (on_gpu - want).abs().max() <= 1e-9 * want.abs().max()
