"""The decoder's forward pieces for attribution: the clean pass with a key/value cache, and the
forward resumed from layer ``l`` with scaled rows at the last prompt position.

Positions before the read position are clean at every layer: one clean pass fills a key/value
cache with them (TransformerLens' own ``TransformerLensKeyValueCache``) and keeps, at the segment
(the read position and the fed answer tokens), the input of every block from the lowest scored
layer up, and each scored layer's ``hook_resid_mid`` and ``hook_post`` at the read position.
:func:`scaled_run` then recomputes only what a scaled activation changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap

from kn_lens.models.answer import answer_logprob_from_logits
from kn_lens.models.backend import HAS_HOOKED_CLASSES
from kn_lens.models.decoder.batch import EncodedDecoderPrompts
from kn_lens.neuron import HookList, hook_name

if TYPE_CHECKING or HAS_HOOKED_CLASSES:  # TransformerLens 3 (4 runs decoders on the bridge)
    from transformer_lens import HookedTransformer
    from transformer_lens.components.mlps.gated_mlp import GatedMLP
    from transformer_lens.components.mlps.mlp import MLP
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    from transformer_lens.utilities.addmm import batch_addmm

__all__ = ["DecoderClean", "clean_pass", "joins_after_block", "logits_from_resid", "scaled_run"]


@dataclass
class DecoderClean:
    """One clean pass over a group: the prefix's keys and values per layer, the residual stream at
    the segment (read position and fed answer tokens) entering each block from the lowest scored
    layer up (``resid_in[n_layers]`` is the last block's output), each scored layer's
    ``hook_resid_mid`` and ``hook_post`` at the read position, and the clean answer
    log-probabilities."""

    cache: TransformerLensKeyValueCache
    resid_in: dict[int, Tensor]  # block j -> [prompt, seg, d_model] entering block j
    resid_mid: dict[int, Tensor]  # scored layer -> [prompt, d_model] at the read position
    acts: Tensor  # [prompt, len(layers), d_mlp]
    logprob: Tensor  # [prompt]


def _layer_of(hook: Any) -> int:
    return int(hook.name.split(".")[1])


def clean_pass(
    model: HookedTransformer, enc: EncodedDecoderPrompts, layers: list[int], keep_resid: bool
) -> DecoderClean:
    dev = enc.tokens.device
    n, p_w = len(enc), enc.prompt_width
    n_layers = model.cfg.n_layers
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, dev, n)
    resid_in: dict[int, Tensor] = {}
    resid_mid: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}

    def keep_block_input(j: int) -> Any:
        def keep(module: Any, args: tuple, kwargs: dict) -> None:
            resid_in[j] = (args[0] if args else kwargs["resid_pre"]).detach()

        return keep

    def keep_last(t: Tensor, hook: Any) -> None:
        resid_in[n_layers] = t.detach()

    def keep_mid(t: Tensor, hook: Any) -> None:
        resid_mid[_layer_of(hook)] = t[:, 0].detach()

    def keep_post(t: Tensor, hook: Any) -> None:
        acts[_layer_of(hook)] = t[:, 0].detach()

    hooks: HookList = [(hook_name(layer), keep_post) for layer in layers]
    if keep_resid:
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", keep_last))
        if joins_after_block(model):
            hooks += [(f"blocks.{layer}.hook_resid_mid", keep_mid) for layer in layers]
    with torch.no_grad():
        if p_w > 1:  # the prefix (positions before the read position) fills the cache
            model(
                enc.tokens[:, : p_w - 1],
                attention_mask=enc.attention_mask[:, : p_w - 1],
                past_kv_cache=cache,
                return_type=None,  # no unembedding: nothing reads the prefix's logits
            )
        cache.freeze()
        # a block's input before its hook_resid_pre fires (rows that join there fire it again)
        handles = (
            [
                model.blocks[j].register_forward_pre_hook(keep_block_input(j), with_kwargs=True)
                for j in range(min(layers), n_layers)
            ]
            if keep_resid
            else []
        )
        seg = slice(p_w - 1, None)
        try:
            with model.hooks(fwd_hooks=hooks):
                resid = model(
                    enc.tokens[:, seg],
                    attention_mask=enc.attention_mask[:, seg],
                    past_kv_cache=cache,
                    stop_at_layer=n_layers,  # the head below, without copying W_U
                )
                logits = logits_from_resid(model, resid)
        finally:
            for handle in handles:
                handle.remove()
    logprob = answer_logprob_from_logits(logits, enc.answer_ids, enc.answer_mask)
    return DecoderClean(
        cache, resid_in, resid_mid, torch.stack([acts[layer] for layer in layers], dim=1), logprob
    )


def joins_after_block(model: HookedTransformer) -> bool:
    """Whether a row scaled at layer ``l`` can skip block ``l`` except its MLP output at the read
    position: the block is ``resid_mid + hook_mlp_out(W_out hook_post + b_out)`` with a plain
    (``MLP``) or gated (``GatedMLP``) TransformerLens MLP and no norm after the MLP. Otherwise
    (parallel attention and MLP, post-norm, layer-norm activations, other MLP classes) the row runs
    all of block ``l`` on its segment, which is as exact and a little slower."""
    cfg = model.cfg
    return (
        not cfg.attn_only
        and not cfg.parallel_attn_mlp
        and not cfg.use_normalization_before_and_after
        and not cfg.is_layer_norm_activation()
        and cfg.original_architecture not in POST_NORM_ARCHITECTURES
        and all(type(b.mlp) in (MLP, GatedMLP) for b in model.blocks)
    )


def _mlp_output(block: Any, post: Tensor) -> Tensor:
    """``W_out post + b_out`` as TransformerLens' ``MLP`` / ``GatedMLP.forward`` computes it."""
    mlp = block.mlp
    if type(mlp) is GatedMLP:
        return torch.nn.functional.linear(post, mlp.W_out.T.contiguous(), mlp.b_out)
    return batch_addmm(mlp.b_out, mlp.W_out, post)


def logits_from_resid(model: HookedTransformer, resid: Tensor) -> Tensor:
    """The end of ``HookedTransformer.forward`` from the last block's output: ``ln_final``,
    ``unembed`` with its hook points and the logit soft-cap. The unembedding is ``resid @ W_U +
    b_U`` on ``W_U`` as stored (the module copies a transposed ``W_U`` on every call: the whole
    unembedding, for each chunk)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    unembed = model.unembed
    x = unembed.hook_in(resid)
    w_u = unembed.W_U.detach()
    flat = torch.addmm(unembed.b_U.detach(), x.reshape(-1, x.shape[-1]), w_u)
    logits = unembed.hook_out(flat.view(*x.shape[:-1], w_u.shape[-1]))
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


class _ScaledRun:
    """The forward resumed from layer ``l`` with scaled rows, for one group of prompts (see
    :func:`scaled_run`); :meth:`start` begins a chunk."""

    def __init__(
        self, model: HookedTransformer, enc: EncodedDecoderPrompts, clean: DecoderClean
    ) -> None:
        self.model, self.enc, self.clean = model, enc, clean
        self.after_block = joins_after_block(model)
        # While rows of layer l join: (rows already in the batch, the joining rows' leaf).
        self.joining: tuple[int, Tensor] | None = None

    def put_scaled(self, act: Tensor, hook: Any) -> Tensor:
        """``hook_post`` of a scored layer: the joining rows' read position takes their leaf.
        With ``after_block`` the hook sees the joining rows' read position alone; otherwise the
        whole batch at block ``l``, whose first ``n_old`` rows pass unchanged."""
        if self.joining is None:
            return act
        n_old, leaf_j = self.joining
        if self.after_block:
            return leaf_j[:, None].to(act.dtype)
        new = torch.cat([leaf_j[:, None].to(act.dtype), act[n_old:, 1:]], dim=1)
        return torch.cat([act[:n_old], new]) if n_old else new

    def start(self, rows: Tensor, sel: Tensor, leaf: Tensor) -> _Chunk:
        return _Chunk(self, rows, sel, leaf)


class _Chunk:
    """One chunk of rows: ``rows`` (prompt of each row), ``sel`` (scored-layer index of each
    row), ``leaf`` (``[row, d_mlp]`` the scaled activations), sorted by layer."""

    def __init__(self, run: _ScaledRun, rows: Tensor, sel: Tensor, leaf: Tensor) -> None:
        self.run, self.rows, self.sel, self.leaf = run, rows, sel, leaf

    def _block(self, j: int, resid: Tensor, rows: Tensor) -> Tensor:
        run = self.run
        entry = run.clean.cache[j]
        keys, values = entry.past_keys, entry.past_values
        if keys.shape[0] == 1:  # one prompt: a view, no copy per row
            keys, values = keys.expand(len(rows), -1, -1, -1), values.expand(len(rows), -1, -1, -1)
        else:
            keys, values = keys[rows], values[rows]
        past = TransformerLensKeyValueCacheEntry(keys, values, frozen=True)
        return run.model.blocks[j](
            resid, past_kv_cache_entry=past, attention_mask=run.enc.attention_mask[rows]
        )

    def _after_block(self, j: int, rows: Tensor, leaf_j: Tensor, sel_j: Tensor) -> Tensor:
        """The joining rows' segment after block ``j``: clean except the read position, which is
        ``resid_mid + hook_mlp_out(W_out hook_post(scaled) + b_out)``."""
        run = self.run
        blk: Any = run.model.blocks[j]
        run.joining = (0, leaf_j)
        try:
            post = blk.mlp.hook_post(run.clean.acts[rows, sel_j][:, None])
        finally:
            run.joining = None
        mlp_out = blk.hook_mlp_out(_mlp_output(blk, post))
        read = blk.hook_resid_post(run.clean.resid_mid[j][rows][:, None] + mlp_out)
        return torch.cat([read, run.clean.resid_in[j + 1][rows][:, 1:]], dim=1)

    def step(self, j: int, resid: Tensor | None, join: slice | None) -> Tensor | None:
        run = self.run
        n_old = 0 if resid is None else resid.shape[0]
        if run.after_block:
            if resid is not None:
                resid = self._block(j, resid, self.rows[:n_old])
            if join is not None:
                new = self._after_block(j, self.rows[join], self.leaf[join], self.sel[join])
                resid = new if resid is None else torch.cat([resid, new])
            return resid
        if join is not None:
            new = run.clean.resid_in[j][self.rows[join]]
            resid = new if resid is None else torch.cat([resid, new])
            run.joining = (n_old, self.leaf[join])
        if resid is None:
            return None
        try:
            return self._block(j, resid, self.rows[: resid.shape[0]])
        finally:
            run.joining = None

    def logits(self, resid: Tensor) -> Float[Tensor, "row seg d_vocab"]:
        return logits_from_resid(self.run.model, resid)


@contextmanager
def scaled_run(
    model: HookedTransformer, enc: EncodedDecoderPrompts, clean: DecoderClean, layers: list[int]
) -> Iterator[Any]:
    """The decoder's resumed forward for the attribution engine: ``start(rows, sel, leaf)`` gives a
    chunk whose ``step(j, resid, join)`` runs block ``j`` and joins the rows scaled there.

    Scaling at layer ``l`` changes nothing in block ``l`` but its MLP output at the read position
    (the answer positions of block ``l`` attend to the read position's layer-``l`` keys and
    values, which come before the MLP). So a row computes ``hook_resid_post = resid_mid +
    hook_mlp_out(W_out hook_post + b_out)`` at the read position, with ``hook_post`` replaced by
    the scaled activation through a hook (callers' hooks on it still fire first), takes the clean
    block output at the answer positions, and joins at block ``l + 1``. Blocks ``l + 1 .. L-1`` run
    on the segment positions only, attending over the cached prefix keys and values plus their own
    (rotary positions and grouped-query attention as TransformerLens computes them with a cache).
    Models whose block does not split that way (:func:`joins_after_block`) run all of block ``l``
    on the segment instead, which is as exact and a little slower. Blocks run as TransformerLens
    modules and hook points, so hooks a caller attached fire; where only the segment is
    recomputed, they see those positions only.
    """
    run = _ScaledRun(model, enc, clean)
    hooks: HookList = [(hook_name(layer), run.put_scaled) for layer in layers]
    with model.hooks(fwd_hooks=hooks):
        yield run.start
