"""The decoder family (causal LMs as ``HookedTransformer``), for :mod:`kn_lens.models.family`.

A fact is read at the last prompt position (the text before the answer); its answer may be several
tokens, scored by teacher forcing; an update writes the unembedding direction of the answer's first
token. Batching is :mod:`.batch`; attribution's forward pieces are :mod:`.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens.data.facts import BagCheck, FactBag, prefix_prompt
from kn_lens.errors import AttributionError
from kn_lens.models.answer import answer_logprob_from_logits
from kn_lens.models.backend import DecoderModel
from kn_lens.models.decoder.batch import EncodedDecoderPrompts, encode_decoder, tokenize_answer
from kn_lens.models.decoder.forward import DecoderClean, clean_pass, logits_from_resid, scaled_run
from kn_lens.models.protocol import Family, StartChunk
from kn_lens.neuron import Hook, HookList

__all__ = ["DecoderFamily", "answer_logprob", "next_token"]


def answer_logprob(
    model: DecoderModel, enc: EncodedDecoderPrompts, *, fwd_hooks: HookList | Sequence = ()
) -> Float[Tensor, " prompt"]:
    """``log p(answer | prompt)`` per prompt: the sum of the teacher-forced answer tokens'
    log-probabilities, optionally under ``fwd_hooks`` (TransformerLens ``(name, fn)`` pairs). On the
    CPU, no gradient."""
    dev = model.cfg.device
    enc = enc.to(dev)
    with torch.no_grad():
        logits = model.run_with_hooks(
            enc.tokens, attention_mask=enc.attention_mask, fwd_hooks=list(fwd_hooks)
        )
    seg = logits[:, enc.prompt_width - 1 :]
    return answer_logprob_from_logits(seg, enc.answer_ids, enc.answer_mask).cpu()


def next_token(
    model: DecoderModel, enc: EncodedDecoderPrompts, *, fwd_hooks: HookList | Sequence = ()
) -> Int[Tensor, " prompt"]:
    """The top-1 next token at each prompt's read position (the model's own answer start)."""
    dev = model.cfg.device
    enc = enc.to(dev)
    with torch.no_grad():
        logits = model.run_with_hooks(
            enc.tokens[:, : enc.prompt_width],
            attention_mask=enc.attention_mask[:, : enc.prompt_width],
            fwd_hooks=list(fwd_hooks),
        )
    return logits[:, -1].argmax(-1).cpu()


class DecoderFamily(Family[DecoderModel, EncodedDecoderPrompts]):
    """Decoders: the text before the answer, answers of any length, read at the last prompt
    position. An update writes the unembedding direction of the answer's first token."""

    name = "decoder"

    def usable_bags(self, model: DecoderModel | None, bags: Sequence[FactBag]) -> BagCheck:
        """Each bag as a decoder bag (:meth:`kn_lens.data.facts.FactBag.to_prefix_bag`): its
        prompts cut before the answer, dropping templates whose answer comes before the subject;
        a bag with no prompt left is skipped. Answers of any token length are kept."""
        kept: list[FactBag] = []
        skipped: list[tuple[FactBag, str]] = []
        dropped: dict[str, int] = {}
        for bag in bags:
            new, n_dropped = bag.to_prefix_bag()
            dropped[bag.relation] = dropped.get(bag.relation, 0) + n_dropped
            if new is None:
                skipped.append((bag, "every prompt has the answer before the subject"))
            else:
                kept.append(new)
        return BagCheck(kept, skipped, dropped)

    def model_prompt(self, prompt: str) -> str | None:
        """A masked prompt's text before ``[MASK]`` (``None`` when there is none)."""
        return prefix_prompt(prompt)

    def encode(
        self,
        model: DecoderModel,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> EncodedDecoderPrompts:
        """:func:`encode_decoder` (left-padded; ``read_pos`` is the last prompt position)."""
        limit = None if max_tokens is None else min(int(max_tokens), int(model.cfg.n_ctx))
        return encode_decoder(
            model, list(prompts), None if answers is None else list(answers), max_tokens=limit
        )

    def forward(self, model: DecoderModel, batch: EncodedDecoderPrompts) -> None:
        """One plain forward pass over the prompts (hooks attached by the caller fire)."""
        b = batch.to(model.cfg.device)
        p_w = b.prompt_width
        model(b.tokens[:, :p_w], attention_mask=b.attention_mask[:, :p_w], return_type=None)

    def readout(
        self,
        model: DecoderModel,
        batch: EncodedDecoderPrompts,
        *,
        fwd_hooks: Sequence[Hook] = (),
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]:
        """Next-token logits at the read position and ``log p(answer | prompt)`` (teacher forced),
        from one forward pass."""
        b = batch.to(model.cfg.device)
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(b.tokens, attention_mask=b.attention_mask)
        seg = logits[:, b.prompt_width - 1 :]
        logp = answer_logprob_from_logits(seg, b.answer_ids, b.answer_mask)
        return seg[:, 0], logp

    def first_token(self, model: DecoderModel, answer: str | int) -> int:
        """The first token of the answer as it follows a prompt (leading-space rule)."""
        if isinstance(answer, str):
            return tokenize_answer(model, 0, "x", answer)[0]
        tid = int(answer)
        if not 0 <= tid < int(model.cfg.d_vocab):
            raise AttributionError(f"token id {tid} is out of range of the vocabulary")
        return tid

    def answer_direction(self, model: DecoderModel, token: int) -> Float[Tensor, " d_model"]:
        """The unembedding direction of ``token``, ``W_U[:, token]``: the residual direction that
        raises that token's logit. (The paper's word embedding ``W_E[token]`` is an input-side
        direction; in a decoder the MLP output is read by the unembedding, so an update writes
        the output-side direction. With tied embeddings, as in SmolLM2, the two are the same.)"""
        return model.W_U.detach()[:, token].clone()

    # --- attribution (kn_lens.attribution) -------------------------------------------------

    def attribution_batch(
        self,
        model: DecoderModel,
        prompts: Sequence[str | Sequence[int]],
        answers: Sequence[str | int | Sequence[int]],
    ) -> EncodedDecoderPrompts:
        """Prompts (text before the answer, or token ids) with one answer each, for teacher
        forcing; :func:`encode_decoder`."""
        if model.cfg.positional_embedding_type == "shortformer":
            raise AttributionError("shortformer positional embeddings are not supported")
        # one answer per prompt; a bare token id is a one-token answer
        per_prompt = [[int(a)] if isinstance(a, int) else a for a in answers]
        return encode_decoder(model, prompts, per_prompt)

    def select(self, batch: EncodedDecoderPrompts, idx: Sequence[int]) -> EncodedDecoderPrompts:
        return batch.select(idx)

    def clean_pass(
        self,
        model: DecoderModel,
        batch: EncodedDecoderPrompts,
        layers: list[int],
        keep_resid: bool,
    ) -> DecoderClean:
        """:func:`kn_lens.models.decoder.forward.clean_pass` (on the model's device)."""
        return clean_pass(model, batch.to(model.cfg.device), layers, keep_resid)  # type: ignore[arg-type]

    def scaled_run(
        self,
        model: DecoderModel,
        batch: EncodedDecoderPrompts,
        clean: DecoderClean,
        layers: list[int],
    ) -> AbstractContextManager[StartChunk]:
        """:func:`kn_lens.models.decoder.forward.scaled_run`."""
        return scaled_run(model, batch.to(model.cfg.device), clean, layers)  # type: ignore[arg-type]

    def segment_logits(
        self, model: DecoderModel, batch: EncodedDecoderPrompts
    ) -> Float[Tensor, "prompt seg d_vocab"]:
        """Logits at the read position and the fed answer positions, from one full forward (the
        blocks at every position, the final norm and unembedding at the segment only)."""
        b = batch.to(model.cfg.device)
        n_layers = model.cfg.n_layers
        resid = model(b.tokens, attention_mask=b.attention_mask, stop_at_layer=n_layers)
        return logits_from_resid(model, resid[:, b.prompt_width - 1 :])  # type: ignore[arg-type]

    def answer_logprob(
        self,
        logits: Float[Tensor, "row seg d_vocab"],
        batch: EncodedDecoderPrompts,
        rows: Int[Tensor, " row"],
    ) -> Float[Tensor, " row"]:
        """``log p(answer | prompt)`` of each row, teacher forced (the sum over answer tokens)."""
        ids = batch.answer_ids.to(logits.device)[rows]
        mask = batch.answer_mask.to(logits.device)[rows]
        return answer_logprob_from_logits(logits, ids, mask)

    def device(self, model: DecoderModel) -> torch.device:
        return torch.device(model.cfg.device or "cpu")
