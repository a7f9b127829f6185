"""Fixtures: tiny random GPT-2, GPT-NeoX and Llama-style Hugging Face checkpoints, saved offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ..word_tokenizer import save_word_tokenizer

WORDS = [
    "the",
    "a",
    "of",
    "is",
    "capital",
    "city",
    "France",
    "Paris",
    "Japan",
    "Tokyo",
    "language",
    "official",
    "delta",
    "epsilon",
    "born",
    "in",
    ".",
    ",",
]

EOT = "<|endoftext|>"
GPT2_SPECIALS = ("<unk>", EOT)


def make_decoder_checkpoint(folder: Path, kind: str, *, seed: int = 0) -> Path:
    """Save a random 2-layer ``kind`` ("gpt2", "gpt_neox", "llama") causal LM with a tokenizer.

    The Llama-style model has a gated SiLU MLP, grouped-query attention (4 query, 2 key/value
    heads), rotary embeddings and tied embeddings. Weights are scaled up so logits are not flat.
    """
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "gpt2":
        n_vocab = len(save_word_tokenizer(folder, WORDS, specials=GPT2_SPECIALS, bos=EOT, eos=EOT))
        cfg = GPT2Config(
            vocab_size=n_vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
        )
        model = GPT2LMHeadModel(cfg)
    elif kind == "gpt_neox":
        n_vocab = len(save_word_tokenizer(folder, WORDS, specials=GPT2_SPECIALS, bos=EOT, eos=EOT))
        cfg = GPTNeoXConfig(
            vocab_size=n_vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=80,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=1,
            rope_parameters={
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "rope_type": "default",
            },
        )
        model = GPTNeoXForCausalLM(cfg)
    elif kind == "llama":
        specials = ("<unk>", "<s>", "</s>")
        vocab = save_word_tokenizer(folder, WORDS, specials=specials, bos="<s>", eos="</s>")
        n_vocab = len(vocab)
        cfg = LlamaConfig(
            vocab_size=n_vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 500.0, "rope_type": "default"},
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
            else:  # norms and biases: random too, so their conversion is checked
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=["gpt2", "gpt_neox", "llama"])
def decoder_ckpt(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """(kind, folder) of a tiny random decoder checkpoint, one per supported family."""
    kind = request.param
    return kind, make_decoder_checkpoint(tmp_path_factory.mktemp(f"tiny_{kind}"), kind)
