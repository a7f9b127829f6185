"""Decoder attribution vs an independent integrated-gradients reference on the Hugging Face model.

A tiny random GPT-2 with a word-level tokenizer is saved as a Hugging Face folder and loaded with
``kn_lens.load_model``. ``kn_lens.attribute(model, prompts, "delta epsilon")`` must equal integrated
gradients of ``p(answer | prompt)`` computed directly on ``GPT2LMHeadModel`` (no kn_lens, no
TransformerLens): a forward hook on ``transformer.h[l].mlp.act`` (whose output is TransformerLens'
``blocks.{l}.mlp.hook_post``) scales the activation at the last prompt position by alpha, one
unpadded prompt at a time, one forward and backward per (prompt, layer, alpha).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import kn_lens

from ..word_tokenizer import save_word_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
WORDS += ["lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon"]
WORDS += ["phi", "chi", "psi", "omega", "one", "two"]
SPECIALS = ["<unk>", "<|endoftext|>", "<pad>"]
PROMPTS = ["alpha beta gamma", "beta gamma", "gamma alpha beta beta"]
ANSWER = "delta epsilon"
STEPS = 5
N_LAYERS = 3


def save_word_gpt2(folder: Path, *, seed: int = 0) -> Path:
    """Save a random 3-layer GPT-2 and a whitespace word-level tokenizer into ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eot = "<|endoftext|>"
    vocab = save_word_tokenizer(folder, WORDS, specials=SPECIALS, bos=eot, eos=eot, pad="<pad>")
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=N_LAYERS,
        n_head=4,
        n_positions=64,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(12.0)  # std 0.24: sharp logits, p(answer) moves with alpha
            else:
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def word_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_word_gpt2(tmp_path_factory.mktemp("word_gpt2"))


def reference_ids(hf_tok: Any, prompt: str, prepend_bos: bool) -> tuple[list[int], list[int]]:
    """The documented convention, written out: [BOS] + prompt words; the answer's words."""
    vocab = hf_tok.get_vocab()
    prompt_ids = [vocab[w] for w in prompt.split()]
    if prepend_bos:
        prompt_ids = [hf_tok.bos_token_id, *prompt_ids]
    return prompt_ids, [vocab[w] for w in ANSWER.split()]


def hf_reference_ig(
    hf: Any, prompt_ids: list[int], answer_ids: list[int], layer: int, steps: int
) -> torch.Tensor:
    """Integrated gradients of p(answer | prompt) w.r.t. the layer's MLP activation at the last
    prompt position, left Riemann sum with alpha = k / steps, k = 0 .. steps - 1."""
    tokens = torch.tensor([prompt_ids + answer_ids[:-1]])
    read = len(prompt_ids) - 1
    act_module = hf.transformer.h[layer].mlp.act
    state: dict[str, Any] = {}

    def hook(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if "alpha" not in state:  # clean pass: record the activation
            state["clean"] = out[0, read].detach().clone()
            return out
        scaled = (state["alpha"] * state["clean"]).requires_grad_(True)
        state["scaled"] = scaled
        out = out.clone()
        out[0, read] = scaled
        return out

    handle = act_module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hf(tokens)
        grads = torch.zeros_like(state["clean"])
        for k in range(steps):
            state["alpha"] = k / steps
            logits = hf(tokens).logits[0]
            probs = torch.softmax(logits, dim=-1)
            p_answer = torch.stack([probs[read + j, a] for j, a in enumerate(answer_ids)]).prod()
            (grad,) = torch.autograd.grad(p_answer, state["scaled"])
            grads += grad
    finally:
        handle.remove()
    return state["clean"] * grads / steps


def test_decoder_attribution_equals_hf_reference(word_gpt2: Path) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = kn_lens.load_model(word_gpt2, device="cpu", dtype=torch.float64)
    hf = GPT2LMHeadModel.from_pretrained(word_gpt2, dtype=torch.float64).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    hf_tok = AutoTokenizer.from_pretrained(word_gpt2)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    assert (n_layers, d_mlp) == (N_LAYERS, 128)

    # The tokens kn_lens' documented convention yields on a word-level vocabulary: BOS (GPT-2's
    # default_prepend_bos) + the prompt's words; the answer with a leading space is still exactly
    # the words "delta", "epsilon" (the whitespace pre-tokenizer drops the space).
    assert model.cfg.default_prepend_bos is True
    vocab = hf_tok.get_vocab()
    assert model.to_tokens(" " + ANSWER, prepend_bos=False)[0].tolist() == [
        vocab["delta"],
        vocab["epsilon"],
    ]
    refs = []
    for prompt in PROMPTS:
        prompt_ids, answer_ids = reference_ids(hf_tok, prompt, model.cfg.default_prepend_bos)
        assert model.to_tokens(prompt)[0].tolist() == prompt_ids
        assert hf_tok.unk_token_id not in prompt_ids + answer_ids
        refs.append(
            torch.stack(
                [
                    hf_reference_ig(hf, prompt_ids, answer_ids, layer, STEPS)
                    for layer in range(n_layers)
                ]
            )
        )
    ref = torch.stack(refs)

    scores = kn_lens.attribute(model, PROMPTS, ANSWER, steps=STEPS)

    assert scores.shape == ref.shape == (len(PROMPTS), n_layers, d_mlp)
    assert scores.dtype == torch.float64
    scale = ref.abs().max().item()
    assert scale > 1e-6  # the reference is not all ~zero
    diff = (scores - ref).abs().max().item()
    assert diff <= 1e-4 * scale, (diff, scale, diff / scale)
