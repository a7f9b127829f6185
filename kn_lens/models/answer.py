"""The answer's log-probability from the logits where it is read, for either model family.

A family's forward gives logits over a *segment* of positions: the ``[MASK]`` alone for an
encoder (``seg = 1``), the last prompt position and the fed answer tokens for a decoder (teacher
forcing). With answer tokens ``a_0 .. a_{A-1}`` (right-padded, ``mask`` 1 at real tokens),

    log p(answer) = sum_k mask_k (logits[k, a_k] - logsumexp(logits[k])).

An encoder answer is one token, the special case ``A = 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["answer_logprob_from_logits"]


class _AnswerLogprob(torch.autograd.Function):
    """The sum above with a lean backward: one pass ``-g softmax(logits)`` plus ``g`` at the answer
    ids, instead of autograd's ``log_softmax`` and ``gather`` backward (two more passes over the
    ``[row, seg, vocab]`` logits and a zero fill)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, ids[:, :, None])[:, :, 0]
        ctx.save_for_backward(logits, lse, ids, mask)
        return ((picked - lse) * mask).sum(-1)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None, None]:
        logits, lse, ids, mask = ctx.saved_tensors
        g = grads[0][:, None] * mask  # [row, seg]
        grad = torch.sub(logits, lse[:, :, None]).exp_().mul_(-g[:, :, None])
        grad.scatter_add_(-1, ids[:, :, None], g[:, :, None])
        return grad, None, None


def answer_logprob_from_logits(
    logits: Float[Tensor, "row seg d_vocab"],
    answer_ids: Int[Tensor, "row answer"],
    answer_mask: Int[Tensor, "row answer"],
) -> Float[Tensor, " row"]:
    """``log p(answer)`` per row from the segment's logits (in float32 at least: a half-precision
    forward's logits are widened before the log-normaliser). The segment may be longer than the
    answer (the extra positions are ignored)."""
    width = answer_ids.shape[1]
    # slice only when needed: a full-width slice still records a backward that fills and copies
    # a whole [row, seg, d_vocab] gradient
    seg = logits if logits.shape[1] == width else logits[:, :width]
    if seg.dtype in (torch.float16, torch.bfloat16):
        seg = seg.float()
    out: Tensor = _AnswerLogprob.apply(seg, answer_ids, answer_mask.to(seg.dtype))
    return out
