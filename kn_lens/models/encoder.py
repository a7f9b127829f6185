"""The encoder family (BERT masked LMs as ``HookedEncoder``), for :mod:`kn_lens.models.family`.

A fact is read at its prompt's ``[MASK]``; its answer is exactly one vocabulary token, as in the
paper (a longer answer is skipped with the reason); an update writes the answer's word embedding
``W_E[token]`` (the paper's rule). Tokenisation and the read-out at ``[MASK]`` are
:mod:`kn_lens.prompts`; the attribution is :mod:`kn_lens.attribution`.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedEncoder

from kn_lens.data.facts import FactBag, check_prompt
from kn_lens.models.family import BagCheck
from kn_lens.neuron import Hook
from kn_lens.prompts import EncodedPrompts, encode, filter_single_token, mask_logits, token_id


class EncoderFamily:
    """Encoders: masked prompts, one-token answers, read at ``[MASK]``."""

    name = "encoder"

    def usable_bags(self, model: HookedEncoder, bags: Sequence[FactBag]) -> BagCheck:
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
        model: HookedEncoder,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> EncodedPrompts:
        """:func:`kn_lens.prompts.encode` (right-padded; ``read_pos`` is the ``[MASK]``)."""
        limit = None if max_tokens is None else min(int(max_tokens), int(model.cfg.n_ctx))
        return encode(model, prompts, max_tokens=limit, answers=answers)

    def forward(self, model: HookedEncoder, batch: EncodedPrompts) -> None:
        """One plain forward pass through the blocks (hooks attached by the caller fire)."""
        b = batch.to(str(model.cfg.device))
        model.encoder_output(b.tokens, b.token_type_ids, b.attention_mask)

    def readout(
        self, model: HookedEncoder, batch: EncodedPrompts, *, fwd_hooks: Sequence[Hook] = ()
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]:
        """Logits at ``[MASK]`` and, with answers, the answer token's log-probability there."""
        logits = mask_logits(model, batch, fwd_hooks=fwd_hooks, batch_size=max(1, len(batch)))
        if batch.answer_ids is None:
            return logits, None
        ids = batch.answer_ids.to(logits.device)
        return logits, logits.log_softmax(-1).gather(-1, ids[:, None])[:, 0]

    def first_token(self, model: HookedEncoder, answer: str | int) -> int:
        """The answer's token (it must be exactly one)."""
        return token_id(model, answer)

    def answer_direction(self, model: HookedEncoder, token: int) -> Float[Tensor, " d_model"]:
        """The answer's word embedding, ``W_E[token]``: the paper's update direction."""
        return model.W_E.detach()[token].clone()


__all__ = ["EncoderFamily"]
