"""Attribution's forward pieces on a ``TransformerBridge``, for both families.

The bridge runs the Hugging Face model, whose own forward owns the layer loop (TransformerLens
4's ``start_at_layer`` is not supported, and the blocks take architecture-specific arguments:
attention masks, rotary position embeddings, position ids). So the clean pass records what each
block from the lowest scored layer up was called with, and its output; a chunk of scaled rows then
calls the same blocks again with the same arguments, the prompt rows picked out of every batched
tensor (:class:`BlockCalls`).

Scaling ``hook_post`` of layer ``l`` at the read position changes nothing below layer ``l``'s MLP
and, at layer ``l``, only the read position's block output. A row scaled at ``l`` therefore joins
the chunk after block ``l``: the clean block output, with the read position recomputed by the
family from its scaled activation (:class:`JoinAt`), and blocks ``l + 1 ..`` run on every position.
The scaled activation enters through a hook on ``blocks.{l}.mlp.hook_post`` (hooks a caller
attached fire first), and every block runs as a bridge module, so TransformerLens hooks fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kn_lens.models.backend import TransformerBridge
from kn_lens.neuron import HookList, hook_name

__all__ = ["BlockCalls", "BridgeClean", "JoinAt", "clean_pass", "scaled_run"]


#: Under autocast, additive attention masks are clamped to this (float16's lowest value): the
#: clean pass's float32 minimum becomes ``-inf`` in bfloat16 / float16, a fully masked row (a
#: left-padding query) then softmaxes to NaN, and ``0 * NaN`` carries it into every row.
_LOW_PRECISION_MASK_MIN = torch.finfo(torch.float16).min


def _pick(value: Any, n: int, rows: Tensor, low_precision: bool = False) -> Any:
    """``value`` with the prompt rows ``rows`` picked out of every batched tensor (``[n, ...]``,
    two or more dimensions; a ``[1, ...]`` tensor broadcasts), in tuples and lists too. With
    ``low_precision`` (autocast on), float tensors are clamped to ``_LOW_PRECISION_MASK_MIN``
    (only masks hold values that low)."""
    if isinstance(value, Tensor):
        if value.dim() >= 2 and value.shape[0] == n:
            value = value[rows.to(value.device)]
        if low_precision and value.is_floating_point():
            value = value.clamp(min=_LOW_PRECISION_MASK_MIN)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_pick(v, n, rows, low_precision) for v in value)
    return value


@dataclass
class BlockCalls:
    """Each recorded block's positional and keyword arguments (its hidden states first) and its
    output, from one clean pass over ``n`` prompts."""

    n: int
    args: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)
    out: dict[int, Tensor] = field(default_factory=dict)

    @contextmanager
    def record(self, model: TransformerBridge, blocks: range) -> Iterator[None]:
        """Record the calls of ``blocks`` while inside."""

        def before(j: int) -> Any:
            def keep(module: Any, args: tuple, kwargs: dict) -> None:
                self.args[j], self.kwargs[j] = args, dict(kwargs)

            return keep

        def after(j: int) -> Any:
            def keep(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
                self.out[j] = (out[0] if isinstance(out, tuple) else out).detach()

            return keep

        handles = []
        for j in blocks:
            blk = model.blocks[j]
            handles.append(blk.register_forward_pre_hook(before(j), with_kwargs=True))
            handles.append(blk.register_forward_hook(after(j), with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, model: TransformerBridge, j: int, resid: Tensor, rows: Tensor) -> Tensor:
        """Block ``j`` on ``resid`` (``[row, pos, d_model]``), called as in the clean pass for
        the prompts ``rows``."""
        low = torch.is_autocast_enabled(resid.device.type)
        args = (resid, *(_pick(a, self.n, rows, low) for a in self.args[j][1:]))
        kwargs = {k: _pick(v, self.n, rows, low) for k, v in self.kwargs[j].items()}
        out = model.blocks[j](*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


@dataclass
class BridgeClean:
    """One clean pass: the clean activations at the read position (``acts``,
    ``[prompt, layer, d_mlp]``), the recorded block calls, and what the family keeps to recompute
    a scaled read position (``extra``: name -> layer -> ``[prompt, ...]``)."""

    acts: Tensor
    calls: BlockCalls
    extra: dict[str, dict[int, Tensor]]


#: ``join(j, rows, post) -> [row, d_model]``: block ``j``'s output at the read position of
#: prompts ``rows`` when its ``hook_post`` there is ``post`` (``[row, 1, d_mlp]``: the clean
#: activation; the scaling hook replaces it).
JoinAt = Callable[[int, Tensor, Tensor], Tensor]


def clean_pass(
    model: TransformerBridge,
    n: int,
    read_pos: Tensor,
    layers: list[int],
    keep_resid: bool,
    forward: Callable[[], None],
    keep: dict[str, str],
) -> BridgeClean:
    """One no-grad pass (``forward()``) keeping the ``hook_post`` activations of ``layers`` at
    ``read_pos``; with ``keep_resid`` also the block calls from ``min(layers)`` up and, for each
    ``name -> hook suffix`` of ``keep``, hook ``blocks.{l}.{suffix}`` at the read position."""
    rows = torch.arange(n, device=read_pos.device)
    acts: dict[int, Tensor] = {}
    extra: dict[str, dict[int, Tensor]] = {name: {} for name in keep}
    calls = BlockCalls(n)

    def at_read(store: dict[int, Tensor], layer: int) -> Any:
        def hook(t: Tensor, hook: Any) -> None:
            store[layer] = t[rows, read_pos.to(t.device)].detach()

        return hook

    hooks: HookList = [(hook_name(layer), at_read(acts, layer)) for layer in layers]
    if keep_resid:
        for name, suffix in keep.items():
            hooks += [(f"blocks.{layer}.{suffix}", at_read(extra[name], layer)) for layer in layers]
    n_layers = int(model.cfg.n_layers)
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(model.hooks(fwd_hooks=hooks))
        if keep_resid:
            stack.enter_context(calls.record(model, range(min(layers), n_layers)))
        forward()
    return BridgeClean(torch.stack([acts[layer] for layer in layers], dim=1), calls, extra)


class _ScaledRun:
    """The resumed forward for one group of prompts; :meth:`start` begins a chunk."""

    def __init__(
        self,
        model: TransformerBridge,
        clean: BridgeClean,
        read_pos: Tensor,
        join_at: JoinAt,
        logits: Callable[[Tensor, Tensor], Tensor],
    ) -> None:
        self.model, self.clean, self.read_pos = model, clean, read_pos
        self.join_at, self.to_logits = join_at, logits
        self.scaled: Tensor | None = None  # what hook_post returns while a joining row runs

    def put_scaled(self, act: Tensor, hook: Any) -> Tensor:
        return act if self.scaled is None else self.scaled.to(act.dtype)

    def start(self, rows: Tensor, sel: Tensor, leaf: Tensor) -> _Chunk:
        return _Chunk(self, rows, sel, leaf)


class _Chunk:
    """One chunk of rows (``rows``: the prompt of each; ``sel``: the scored-layer index of each;
    ``leaf``: ``[row, d_mlp]``), sorted by layer."""

    def __init__(self, run: _ScaledRun, rows: Tensor, sel: Tensor, leaf: Tensor) -> None:
        self.run, self.rows, self.sel, self.leaf = run, rows, sel, leaf

    def step(self, j: int, resid: Tensor | None, join: slice | None) -> Tensor | None:
        run = self.run
        calls = run.clean.calls
        if resid is not None:
            resid = calls.run(run.model, j, resid, self.rows[: resid.shape[0]])
        if join is None:
            return resid
        rows_j = self.rows[join]
        post = run.clean.acts[rows_j, self.sel[join]][:, None]
        run.scaled = self.leaf[join][:, None]
        try:
            at_read = run.join_at(j, rows_j, post)
        finally:
            run.scaled = None
        out = calls.out[j][rows_j]
        pos = run.read_pos[rows_j]
        joining = out.index_put((torch.arange(len(rows_j), device=out.device), pos), at_read)
        return joining if resid is None else torch.cat([resid, joining])

    def logits(self, resid: Tensor) -> Tensor:
        return self.run.to_logits(resid, self.rows)


@contextmanager
def scaled_run(
    model: TransformerBridge,
    clean: BridgeClean,
    read_pos: Tensor,
    layers: list[int],
    join_at: JoinAt,
    logits: Callable[[Tensor, Tensor], Tensor],
) -> Iterator[Any]:
    """The bridge's resumed forward for the attribution engine: ``start(rows, sel, leaf)`` gives
    a chunk whose ``step(j, resid, join)`` runs block ``j`` (as recorded) on the rows already
    joined and joins the rows scaled at layer ``j``; ``logits(resid, rows)`` is the family's
    head on the last block's output."""
    run = _ScaledRun(model, clean, read_pos, join_at, logits)
    hooks: HookList = [(hook_name(layer), run.put_scaled) for layer in layers]
    with model.hooks(fwd_hooks=hooks):
        yield run.start
