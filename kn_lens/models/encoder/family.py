"""The encoder family (BERT masked LMs as ``HookedEncoder``), for :mod:`kn_lens.models.family`.

A fact is read at its prompt's ``[MASK]``; its answer is exactly one vocabulary token, as in the
paper (a longer answer is skipped with the reason); an update writes the answer's word embedding
``W_E[token]`` (the paper's rule). Tokenisation and the read-out at ``[MASK]`` are
:mod:`kn_lens.prompts`; attribution's forward pieces are :mod:`.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens.data.facts import BagCheck, FactBag, check_prompt
from kn_lens.models.answer import answer_logprob_from_logits
from kn_lens.models.backend import EncoderModel
from kn_lens.models.encoder.forward import EncoderClean, clean_pass, scaled_run
from kn_lens.models.protocol import Family, StartChunk
from kn_lens.neuron import Hook
from kn_lens.prompts import (
    EncodedPrompts,
    encode,
    encoder_output,
    filter_single_token,
    logits_at_mask,
    mask_logits,
    token_id,
)

__all__ = ["EncoderFamily"]


class EncoderFamily(Family[EncoderModel, EncodedPrompts]):
    """Encoders: masked prompts, one-token answers, read at ``[MASK]``."""

    name = "encoder"

    def usable_bags(self, model: EncoderModel, bags: Sequence[FactBag]) -> BagCheck:
        """Masked bags whose answer is one vocabulary token."""
        check = filter_single_token(list(bags), model)
        skipped = list(check.skipped)
        kept = []
        for b in check.kept:
            if b.is_prefix:
                skipped.append((b, "its prompts have no [MASK] (a decoder bag)"))
            else:
                kept.append(b)
        return BagCheck(kept, skipped)

    def model_prompt(self, prompt: str) -> str | None:
        """A masked prompt is an encoder prompt as it is."""
        return check_prompt(prompt)

    def encode(
        self,
        model: EncoderModel,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> EncodedPrompts:
        """:func:`kn_lens.prompts.encode` (right-padded; ``read_pos`` is the ``[MASK]``)."""
        limit = None if max_tokens is None else min(int(max_tokens), int(model.cfg.n_ctx))
        return encode(model, prompts, max_tokens=limit, answers=answers)

    def forward(self, model: EncoderModel, batch: EncodedPrompts) -> None:
        """One plain forward pass through the blocks (hooks attached by the caller fire)."""
        b = batch.to(str(model.cfg.device))
        encoder_output(model, b)

    def readout(
        self, model: EncoderModel, batch: EncodedPrompts, *, fwd_hooks: Sequence[Hook] = ()
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]:
        """Logits at ``[MASK]`` and, with answers, the answer token's log-probability there."""
        logits = mask_logits(model, batch, fwd_hooks=fwd_hooks, batch_size=max(1, len(batch)))
        if batch.answer_ids is None:
            return logits, None
        ids = batch.answer_ids.to(logits.device)
        return logits, logits.log_softmax(-1).gather(-1, ids[:, None])[:, 0]

    def first_token(self, model: EncoderModel, answer: str | int) -> int:
        """The answer's token (it must be exactly one)."""
        return token_id(model, answer)

    def answer_direction(self, model: EncoderModel, token: int) -> Float[Tensor, " d_model"]:
        """The answer's word embedding, ``W_E[token]``: the paper's update direction."""
        return model.W_E.detach()[token].clone()

    # --- attribution (kn_lens.attribution) -------------------------------------------------

    def attribution_batch(
        self, model: EncoderModel, prompts: Sequence[str], answers: Sequence[str | int]
    ) -> EncodedPrompts:
        """Masked prompts with one answer token each (the answers must be one token: a string
        that is one vocabulary token, or a token id)."""
        enc = encode(model, prompts, device="cpu")  # validates the prompts (one [MASK] each)
        ids = torch.tensor([token_id(model, a) for a in answers], dtype=torch.long)
        return EncodedPrompts(enc.tokens, enc.token_type_ids, enc.attention_mask, enc.mask_pos, ids)

    def select(self, batch: EncodedPrompts, idx: Sequence[int]) -> EncodedPrompts:
        return batch.select(idx)

    def clean_pass(
        self, model: EncoderModel, batch: EncodedPrompts, layers: list[int], keep_resid: bool
    ) -> EncoderClean:
        """:func:`kn_lens.models.encoder.forward.clean_pass` (on the model's device)."""
        return clean_pass(model, batch.to(str(model.cfg.device)), layers, keep_resid)  # type: ignore[arg-type]

    def scaled_run(
        self, model: EncoderModel, batch: EncodedPrompts, clean: EncoderClean, layers: list[int]
    ) -> AbstractContextManager[StartChunk]:
        """:func:`kn_lens.models.encoder.forward.scaled_run`."""
        return scaled_run(model, batch.to(str(model.cfg.device)), clean, layers)  # type: ignore[arg-type]

    def segment_logits(
        self, model: EncoderModel, batch: EncodedPrompts
    ) -> Float[Tensor, "prompt seg d_vocab"]:
        """Logits at ``[MASK]`` (a one-position segment), from one full forward."""
        b = batch.to(str(model.cfg.device))
        resid = encoder_output(model, b)
        return logits_at_mask(model, resid, b.mask_pos)[:, None]

    def answer_logprob(
        self,
        logits: Float[Tensor, "row seg d_vocab"],
        batch: EncodedPrompts,
        rows: Int[Tensor, " row"],
    ) -> Float[Tensor, " row"]:
        """``log p(answer)`` at ``[MASK]`` of each row."""
        ids = batch.first_answer_ids.to(logits.device)[rows][:, None]
        return answer_logprob_from_logits(logits, ids, torch.ones_like(ids))

    def device(self, model: EncoderModel) -> torch.device:
        return torch.device(model.cfg.device or "cpu")
