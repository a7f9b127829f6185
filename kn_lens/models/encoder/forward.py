"""The encoder's forward pieces for attribution: the clean pass, and the forward resumed from layer
``l`` with scaled rows at ``[MASK]``.

Scaling at layer ``l`` changes nothing below layer ``l``'s MLP, and in that MLP only the
``[MASK]`` position. One clean forward pass (no autograd) keeps each scored layer's block output
and its ``hook_resid_mid`` at ``[MASK]``; a row for layer ``l`` recomputes only the second half of
block ``l`` at ``[MASK]`` (with ``hook_post`` replaced by the scaled activation), puts that into
the clean block output and joins the batch at block ``l + 1``. Nothing reads the last block away
from ``[MASK]``: it computes keys and values at every position and everything else at ``[MASK]``
only, and so does the masked-LM head.

The blocks and their parts are called as TransformerLens modules and hook points, in
``BertBlock.forward``'s order, and the scaling is a hook on ``blocks.{l}.mlp.hook_post``, so hooks a
caller attached (for example an intervention) still fire. Where a block is computed at ``[MASK]``
only, those hooks see one position instead of all: position-wise hooks behave exactly as in a full
forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from kn_lens.models.backend import HAS_HOOKED_CLASSES
from kn_lens.neuron import HookList, hook_name
from kn_lens.prompts import EncodedPrompts, logits_at_mask

if TYPE_CHECKING or HAS_HOOKED_CLASSES:  # TransformerLens 3 (4 runs encoders on the bridge)
    from transformer_lens import HookedEncoder
    from transformer_lens.components import BertBlock

__all__ = ["EncoderClean", "clean_pass", "scaled_run"]


@dataclass
class EncoderClean:
    """One clean pass over a group: each scored layer's block output (``[prompt, pos, d_model]``;
    not kept for the last block) and ``hook_resid_mid`` at ``[MASK]`` (``[prompt, d_model]``),
    and the clean ``[MASK]`` activations ``acts`` (``[prompt, layer, d_mlp]``)."""

    block_out: dict[int, Tensor]
    resid_mid: dict[int, Tensor]
    acts: Tensor


def _additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``[batch, 1, 1, pos]``: 0 where attended, ``-inf`` at padding (as HookedEncoder builds
    it)."""
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    ninf = torch.full((), -torch.inf, dtype=dtype, device=attention_mask.device)
    return torch.where(attention_mask[:, None, None, :] == 0, ninf, zero)


def _after_attention(block: BertBlock, resid_mid: Tensor) -> Tensor:
    """The second half of ``BertBlock.forward``, from ``resid_mid`` (after ``hook_resid_mid``) to
    the block output, firing the same hook points in the same order; on any number of positions."""
    mlp_in = block.hook_mlp_in(resid_mid.clone()) if block.cfg.use_hook_mlp_in else resid_mid
    normalized_resid_mid = block.ln1(mlp_in)
    mlp_out = block.hook_mlp_out(block.mlp(normalized_resid_mid))
    resid_post = block.hook_resid_post(normalized_resid_mid + mlp_out)
    return block.hook_normalized_resid_post(block.ln2(resid_post))


def _block_at_mask(
    block: BertBlock,
    resid: Float[Tensor, "batch pos d_model"],
    additive_mask: Float[Tensor, "batch 1 1 pos"],
    mask_pos: Int[Tensor, " batch"],
) -> Float[Tensor, "batch 1 d_model"]:
    """``block(resid, additive_mask)`` at each row's ``[MASK]`` position only.

    Keys and values still come from every position; the query, the attention output, the MLP and
    the layer norms are computed at ``[MASK]`` alone. It calls the block's own submodules and hook
    points in ``BertBlock.forward``'s order, so hooks fire (from ``hook_attn_out`` on, on the
    ``[MASK]`` position only). Used for the last block, whose other positions nobody reads.
    """
    rows = torch.arange(resid.shape[0], device=resid.device)
    if block.cfg.use_split_qkv_input:  # per-head inputs: keep TransformerLens' own path
        return block(resid, additive_mask)[rows, mask_pos][:, None]
    resid = block.hook_resid_pre(resid)
    query = resid[rows, mask_pos][:, None]
    attn_out = block.hook_attn_out(
        block.attn(query, resid, resid, additive_attention_mask=additive_mask)
    )
    return _after_attention(block, block.hook_resid_mid(query + attn_out))


def clean_pass(
    model: HookedEncoder, enc: EncodedPrompts, layers: list[int], keep_resid: bool
) -> EncoderClean:
    """One no-grad forward over ``enc``.

    Returns, when ``keep_resid``, for each ``l`` in ``layers``: the output of block ``l``
    (``[prompt, pos, d_model]``, not kept for the last block) and ``hook_resid_mid`` of block ``l``
    at ``[MASK]`` (``[prompt, d_model]``); and always the clean ``[MASK]`` activations
    ``[prompt, len(layers), d_mlp]``.
    """
    rows = torch.arange(len(enc), device=enc.tokens.device)
    last = model.cfg.n_layers - 1
    block_out: dict[int, Tensor] = {}
    mid: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}

    def layer_of(hook: HookPoint) -> int:
        # A set-up TransformerLens model names every hook point ("blocks.{l}. ...").
        assert hook.name is not None
        return int(hook.name.split(".")[1])

    def keep_out(t: Tensor, hook: HookPoint) -> None:
        block_out[layer_of(hook)] = t.detach()

    def keep_mid(t: Tensor, hook: HookPoint) -> None:
        mid[layer_of(hook)] = t[rows, enc.mask_pos].detach()

    def keep_post(t: Tensor, hook: HookPoint) -> None:
        acts[layer_of(hook)] = t[rows, enc.mask_pos].detach()

    hooks: HookList = [(hook_name(layer), keep_post) for layer in layers]
    if keep_resid:
        hooks += [(f"blocks.{layer}.hook_resid_mid", keep_mid) for layer in layers]
        hooks += [
            (f"blocks.{layer}.hook_normalized_resid_post", keep_out)
            for layer in layers
            if layer < last
        ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model.encoder_output(enc.tokens, enc.token_type_ids, enc.attention_mask)
    return EncoderClean(block_out, mid, torch.stack([acts[layer] for layer in layers], dim=1))


class _ScaledRun:
    """The resumed forward for one group of prompts; :meth:`start` begins a chunk."""

    def __init__(self, model: HookedEncoder, enc: EncodedPrompts, clean: EncoderClean) -> None:
        self.model, self.enc, self.clean = model, enc, clean
        self.lengths = enc.attention_mask.sum(-1)
        self.scaled: Tensor | None = None  # what hook_post returns while a scaled MLP runs

    def put_scaled(self, act: Tensor, hook: HookPoint) -> Tensor:
        return act if self.scaled is None else self.scaled.to(act.dtype)

    def start(self, rows: Tensor, sel: Tensor, leaf: Tensor) -> _Chunk:
        return _Chunk(self, rows, leaf)


class _Chunk:
    """One chunk of rows (``rows``: the prompt of each; ``leaf``: ``[row, d_mlp]``), sorted by
    layer; padded to its longest prompt."""

    def __init__(self, run: _ScaledRun, rows: Tensor, leaf: Tensor) -> None:
        self.run, self.rows, self.leaf = run, rows, leaf
        enc = run.enc
        self.width = int(run.lengths[rows].max())
        self.mask_pos = enc.mask_pos[rows]
        self.add_mask = _additive_mask(enc.attention_mask[rows, : self.width], run.clean.acts.dtype)
        self.last = run.model.cfg.n_layers - 1

    def step(self, j: int, resid: Tensor | None, join: slice | None) -> Tensor | None:
        run, last = self.run, self.last
        blk = run.model.blocks[j]
        if resid is not None:
            n = resid.shape[0]
            if j == last:  # nothing reads the last block away from [MASK]
                resid = _block_at_mask(blk, resid, self.add_mask[:n], self.mask_pos[:n])
            else:
                resid = blk(resid, self.add_mask[:n])
        if join is None:
            return resid
        # Rows scaled at layer j: below its MLP nothing changed, and its MLP changes only [MASK].
        # Run the block's second half at [MASK] with hook_post replaced by the scaled activations,
        # and put the result into the clean block output.
        rows_j = self.rows[join]
        run.scaled = self.leaf[join][:, None]
        try:
            at_mask = _after_attention(blk, run.clean.resid_mid[j][rows_j][:, None])
        finally:
            run.scaled = None
        if j == last:
            joining = at_mask
        else:
            n_j = len(rows_j)
            joining = run.clean.block_out[j][rows_j, : self.width].index_put(
                (torch.arange(n_j, device=rows_j.device), self.mask_pos[join]), at_mask[:, 0]
            )
        return joining if resid is None else torch.cat([resid, joining])

    def logits(self, resid: Tensor) -> Float[Tensor, "row seg d_vocab"]:
        at = torch.zeros(resid.shape[0], dtype=torch.long, device=resid.device)
        return logits_at_mask(self.run.model, resid, at)[:, None]


@contextmanager
def scaled_run(
    model: HookedEncoder, enc: EncodedPrompts, clean: EncoderClean, layers: list[int]
) -> Iterator[Any]:
    """The encoder's resumed forward for the attribution engine: ``start(rows, sel, leaf)`` gives
    a chunk whose ``step(j, resid, join)`` runs block ``j`` on the rows already joined (at
    ``[MASK]`` only in the last block) and joins the rows scaled at layer ``j``."""
    run = _ScaledRun(model, enc, clean)
    hooks: HookList = [(hook_name(layer), run.put_scaled) for layer in layers]
    with model.hooks(fwd_hooks=hooks):
        yield run.start
