"""Knowledge attribution: integrated gradients over the MLP neurons at ``[MASK]``.

For a prompt with one ``[MASK]`` and an answer token ``y``, Dai et al. (2022) score neuron ``i`` of
layer ``l`` (the activation ``a_i`` read at ``blocks.{l}.mlp.hook_post``, the ``[MASK]``
position) by

    Attr(a_i) = a_i * (1/m) * sum_{k=0}^{m-1} d p_y(alpha_k * a) / d (alpha_k a_i),   alpha_k = k/m,

where ``p_y(w)`` is the model's softmax probability of ``y`` at ``[MASK]`` when the whole ``[MASK]``
activation vector of layer ``l`` is replaced by ``w`` and every other layer and position keeps its
natural value. The zero vector is the baseline; the sum is a left Riemann sum with ``m = steps``.
The scores of a layer add up to about ``p_y(a) - p_y(0)`` (completeness), the closer the larger
``m``.

:func:`attribute` computes these scores for many prompts and layers at once. Everything is exact
(the same numbers as one full forward and backward pass per layer and step); the speed comes from
not doing work whose result is known:

- the prompts and the alpha-steps of several layers share one batch (rows ``prompt x layer x
  alpha``, cut into chunks of ``batch_size`` rows so memory stays bounded);
- scaling at layer ``l`` changes nothing below layer ``l``'s MLP, and in that MLP only the
  ``[MASK]`` position. One clean forward pass (no autograd) keeps each scored layer's block output
  and its ``hook_resid_mid`` at ``[MASK]``; a row for layer ``l`` recomputes only the second half of
  block ``l`` at ``[MASK]`` (with ``hook_post`` replaced by the scaled activation), puts that into
  the clean block output and joins the batch at block ``l + 1``. A chunk runs its blocks bottom-up
  and the batch grows as rows join;
- nothing reads the last block away from ``[MASK]``: it computes keys and values at every position
  and everything else at ``[MASK]`` only, and so does the masked-LM head;
- autograd records only what depends on the scaled activation (a single leaf tensor per chunk),
  and the gradient is taken with ``torch.autograd.grad`` with respect to that leaf alone.

The blocks and their parts are called as TransformerLens modules and hook points, in
``BertBlock.forward``'s order, and the scaling is a hook on ``blocks.{l}.mlp.hook_post``, so hooks a
caller attached (for example an intervention) still fire. Where a block is computed at ``[MASK]``
only (the second half of the scaled block, and the last block from ``hook_attn_out`` on), those
hooks see one position instead of all: position-wise hooks behave exactly as in a full forward.

Lower precision is opt-in: ``attribute(..., dtype=torch.bfloat16)`` (or ``torch.float16``) runs
the scaled forward and backward passes, where integrated gradients spends its time, under
``torch.autocast`` to that dtype: matrix products in half precision, layer norms and softmax in
float32 as autocast keeps them. The clean pass stays in the model's own precision, so the
activations ``a_i`` that multiply the gradient sums are exact; the alpha grid and the gradient
sums are float32; the scores come back in the model's dtype. The model is neither copied nor
cast, so hooks and weight edits on it apply unchanged. ``dtype=None`` (the default) or
``torch.float32`` is exact, and the ``"activation"`` baseline is always exact. Autocast was
chosen over a cast copy of the model: on the default model it matched float32 more closely, at
the same speed on the CPU, and needs no second copy of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedEncoder, HookedTransformer
from transformer_lens.components import BertBlock
from transformer_lens.hook_points import HookPoint

from kn_lens.config import default_batch_size
from kn_lens.models.decoder import decoder_attribute
from kn_lens.neuron import HookList, hook_name, model_shape, no_param_grads, resolve_layers
from kn_lens.prompts import EncodedPrompts, encode, logits_at_mask, token_id

Method = Literal["ig", "activation"]
METHODS: tuple[str, ...] = ("ig", "activation")
#: The ``dtype`` values :func:`attribute` takes, by name (``None`` = ``"float32"``, exact).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

__all__ = ["attribute", "DTYPES", "METHODS", "Method", "resolve_dtype"]


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The run dtype for ``attribute(..., dtype=...)``: ``None`` for the exact default
    (``None``, ``torch.float32`` or ``"float32"``), else ``torch.bfloat16`` / ``torch.float16``
    (also by name). ``ValueError`` names any other value."""
    if dtype is None:
        return None
    by_value = {v: v for v in DTYPES.values()}
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else by_value.get(dtype)
    if resolved is None:
        raise ValueError(f"dtype must be None or one of {', '.join(DTYPES)}, got {dtype!r}")
    return None if resolved == torch.float32 else resolved


def _autocast(model: HookedEncoder, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on the model's device type; nothing for ``None``."""
    if dtype is None or dtype == model.cfg.dtype:
        return nullcontext()
    return torch.autocast(device_type=torch.device(model.cfg.device or "cpu").type, dtype=dtype)


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


def _clean_pass(
    model: HookedEncoder, enc: EncodedPrompts, layers: list[int], keep_resid: bool
) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor]:
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
    return block_out, mid, torch.stack([acts[layer] for layer in layers], dim=1)


def _ig_group(
    model: HookedEncoder,
    enc: EncodedPrompts,
    target: int,
    layers: list[int],
    steps: int,
    batch_size: int,
    half: torch.dtype | None = None,
) -> Tensor:
    """IG scores ``[prompt, len(layers), d_mlp]`` for one group of prompts (on the model's
    device).

    The clean pass runs in the model's precision; with ``half`` the scaled passes (and their
    gradients) run under ``torch.autocast`` to that dtype, so the clean activations that multiply
    the gradient sums stay exact.
    """
    dev = enc.tokens.device
    n_prompts, n_sel = len(enc), len(layers)
    last = model.cfg.n_layers - 1
    block_out, resid_mid, clean = _clean_pass(model, enc, layers, keep_resid=True)
    run_dtype = clean.dtype
    lengths = enc.attention_mask.sum(-1)

    # Rows in (prompt, layer, alpha) order, so that a chunk mostly holds one prompt (little
    # padding); inside a chunk they are then stably sorted by layer, so the rows scaled at or below
    # layer j always form a prefix of the chunk.
    prompt = torch.arange(n_prompts, device=dev).repeat_interleave(n_sel * steps)
    sel = torch.arange(n_sel, device=dev).repeat_interleave(steps).repeat(n_prompts)
    k = torch.arange(steps, device=dev).repeat(n_prompts * n_sel)
    block = torch.tensor(layers, device=dev)[sel]
    # Sums and the alpha grid in at least float32, so a half-precision model only rounds what
    # its own forward and backward passes round.
    acc = torch.promote_types(clean.dtype, torch.float32)
    alpha = k.to(acc) / steps

    grad_sum = torch.zeros(n_prompts * n_sel, model_shape(model)[1], dtype=acc, device=dev)
    scaled: list[Tensor | None] = [None]  # the values hook_post returns while a scaled MLP runs

    def put_scaled(act: Tensor, hook: HookPoint) -> Tensor:
        return act if scaled[0] is None else scaled[0].to(act.dtype)

    hook_names: HookList = [(hook_name(layer), put_scaled) for layer in layers]
    n_rows = len(sel)
    lower = _autocast(model, half)
    with no_param_grads(model), torch.enable_grad(), model.hooks(fwd_hooks=hook_names), lower:
        for c0 in range(0, n_rows, batch_size):
            c1 = min(c0 + batch_size, n_rows)
            perm = c0 + torch.sort(block[c0:c1], stable=True).indices
            c_sel, c_prompt, c_block = sel[perm], prompt[perm], block[perm]
            width = int(lengths[c_prompt].max())
            mask_pos = enc.mask_pos[c_prompt]
            add_mask = _additive_mask(enc.attention_mask[c_prompt, :width], run_dtype)
            leaf = (alpha[perm, None] * clean[c_prompt, c_sel]).to(run_dtype).requires_grad_(True)
            blocks_here = c_block.tolist()
            resid: Tensor | None = None  # rows scaled below block j, entering block j
            for j in range(blocks_here[0], model.cfg.n_layers):
                blk = model.blocks[j]
                if resid is not None:
                    n = resid.shape[0]
                    if j == last:  # nothing reads the last block away from [MASK]
                        resid = _block_at_mask(blk, resid, add_mask[:n], mask_pos[:n])
                    else:
                        resid = blk(resid, add_mask[:n])
                if j not in blocks_here:
                    continue
                # Rows scaled at layer j: below its MLP nothing changed, and its MLP changes only
                # [MASK]. Run the block's second half at [MASK] with hook_post replaced by the
                # scaled activations, and put the result into the clean block output.
                start = blocks_here.index(j)
                stop = len(blocks_here) - blocks_here[::-1].index(j)
                rows_j = c_prompt[start:stop]
                scaled[0] = leaf[start:stop, None]
                try:
                    at_mask = _after_attention(blk, resid_mid[j][rows_j][:, None])
                finally:
                    scaled[0] = None
                if j == last:
                    joining = at_mask
                else:
                    joining = block_out[j][rows_j, :width].index_put(
                        (torch.arange(stop - start, device=dev), mask_pos[start:stop]),
                        at_mask[:, 0],
                    )
                resid = joining if resid is None else torch.cat([resid, joining])
            assert resid is not None
            logits = logits_at_mask(model, resid, torch.zeros_like(mask_pos))
            prob = logits.softmax(-1)[:, target]
            (grad,) = torch.autograd.grad(prob.sum(), leaf)
            grad_sum.index_add_(0, c_prompt * n_sel + c_sel, grad.to(acc))
    return clean * grad_sum.view(n_prompts, n_sel, -1) / steps


def attribute(
    model: HookedEncoder | HookedTransformer,
    prompts: Sequence[str],
    target: str | int,
    *,
    steps: int = 20,
    method: str = "ig",
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
    dtype: torch.dtype | str | None = None,
) -> Float[Tensor, "prompt layer d_mlp"]:
    """Attribution scores of every MLP neuron at each prompt's ``[MASK]`` for answer ``target``.

    Args:
        model: a TransformerLens ``HookedEncoder`` with ``model.tokenizer`` (see
            :func:`kn_lens.load_model`). Runs on ``model.cfg.device``. A ``HookedTransformer``
            (a decoder) is scored by :func:`kn_lens.models.decoder.decoder_attribute`: prompts are
            the text before the answer, ``target`` the answer text (several tokens allowed), and
            the neurons are read at the last prompt position.
        prompts: ``P`` prompts, each with exactly one ``[MASK]`` (a fact's bag, usually).
        target: the answer, a string that is exactly one vocabulary token, or a token id.
        steps: ``m``, the number of Riemann steps (alpha = 0, 1/m, ..., (m-1)/m).
        method: ``"ig"`` for integrated gradients (the paper's method), ``"activation"`` for the
            paper's baseline, the raw activation at ``[MASK]``.
        batch_size: at most this many rows (one row = one prompt at one alpha for one layer) per
            forward/backward pass; bounds memory, does not change the result. Default
            :func:`kn_lens.config.default_batch_size` of the model's device: 64 on the CPU, 2048 on
            CUDA, where small passes leave the GPU idle.
        layers: which layers to score (default all), in the order the output lists them.
        dtype: ``None`` or ``torch.float32`` (the default): exact, the model's own precision.
            ``torch.bfloat16`` or ``torch.float16`` (or their names): the scaled IG passes run
            under ``torch.autocast`` in that dtype (see the module docstring); the clean pass,
            the alpha grid and the gradient sums stay in float32. Faster where the hardware has fast
            half-precision matrix products; an approximation: check it against float32 on your
            facts (float16 can overflow where bfloat16 does not).

    Returns:
        ``[P, len(layers), d_mlp]`` scores on the CPU, in the model's dtype; ``[p, i, n]`` is neuron
        ``n`` of layer ``layers[i]`` for prompt ``p``.

    Raises:
        ValueError: a prompt without exactly one ``[MASK]``, a target that is not one token, an
            unknown method, or a bad ``steps`` / ``batch_size`` / ``layers`` / ``dtype`` value;
            the message names it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    run_dtype = resolve_dtype(dtype)
    if isinstance(model, HookedTransformer):
        # Decoders: the fact is read at the last prompt position (kn_lens.models.decoder).
        if run_dtype is not None:
            raise ValueError("dtype= is not supported for decoders yet; use float32")
        if not isinstance(target, str):
            raise ValueError("a decoder's target is the answer text (its tokens follow the prompt)")
        return decoder_attribute(
            model, prompts, target, steps=steps, batch_size=batch_size, layers=layers, method=method
        )
    if batch_size is None:
        batch_size = default_batch_size(model.cfg.device)
    sel_layers = resolve_layers(model, layers)
    enc = encode(model, prompts)  # validates the prompts (one [MASK] each)
    target_id = token_id(model, target)
    enc = enc.to(str(model.cfg.device))

    # Prompts sorted by length so that chunks carry little padding; groups of at most
    # `batch_size` prompts bound the cache of clean layer inputs.
    lengths = enc.attention_mask.sum(-1).tolist()
    by_length = sorted(range(len(enc)), key=lambda i: (-lengths[i], i))
    out = torch.empty(len(enc), len(sel_layers), model_shape(model)[1], dtype=model.cfg.dtype)
    for g0 in range(0, len(by_length), batch_size):
        idx = by_length[g0 : g0 + batch_size]
        group = enc.select(idx)
        if method == "activation":  # no gradients: exact whatever the dtype
            _, _, scores = _clean_pass(model, group, sel_layers, keep_resid=False)
        else:
            scores = _ig_group(model, group, target_id, sel_layers, steps, batch_size, run_dtype)
        out[torch.tensor(idx)] = scores.detach().to("cpu", model.cfg.dtype)
    return out
