"""Typed edits of feed-forward value vectors, with exact restore.

In TransformerLens, neuron ``(l, i)`` writes ``activation * blocks[l].mlp.W_out[i]`` into the
residual stream, so row ``i`` of ``W_out`` (shape ``[d_mlp, d_model]``) is the neuron's *value
vector*. Updating a fact and erasing a relation (Dai et al. 2022, section 5) change these rows
directly; every such change in kn_lens goes through this module.

Each change function

- validates the neurons first (non-empty, no duplicates, layer and index in range), raising
  ``KnLensError`` naming the offending neuron;
- refuses non-finite edit values (NaN or inf in ``values``, ``vector`` or ``scale``, or a new row
  that puts NaN/inf where the row was finite) with ``KnLensError``, before anything is changed;
- saves the original rows, then writes the new ones in place under ``torch.no_grad`` on the
  parameter's data (the ``Parameter`` object and its storage stay the same);
- is all-or-nothing: if anything raises halfway through a multi-row change, the rows already
  written are put back before the exception propagates, so nothing is left changed;
- returns a :class:`RowEdit` handle whose :meth:`RowEdit.restore` puts the saved rows back bit
  for bit. The handle is also a context manager that restores on exit::

      with zero_rows(model, [Neuron(3, 17), Neuron(5, 2)]):
          logits = mask_logits(model, prompts)  # rows zeroed here
      # rows restored here, exactly

Overlapping edits must be restored in reverse order (last applied, first restored), as nested
``with`` blocks do; :meth:`RowEdit.restore` refuses, with :class:`RestoreError` (a ``RuntimeError``
and a ``KnLensError``), when the rows no longer hold what its edit wrote (compared bit for bit, so
rows holding NaN restore exactly too). Leaving a ``with`` block restores every row that can be
restored, keeps an exception raised inside the block, and names the rows it had to leave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens.errors import KnLensError
from kn_lens.models.family import Model, check_editable
from kn_lens.neuron import Neuron, NeuronsLike, check_neurons

log = logging.getLogger(__name__)


def w_out(model: Model, layer: int) -> Tensor:
    """The ``W_out`` weight of block ``layer`` (shape ``[d_mlp, d_model]``): a parameter of a
    ``HookedEncoder`` / ``HookedTransformer``, a view of the Hugging Face weight on a
    ``TransformerBridge`` (row edits write through it)."""
    # nn.Module attribute access is typed Tensor | Module; W_out is a tensor in every block.
    return cast(Tensor, model.blocks[layer].mlp.W_out)


def _read_row(model: Model, n: Neuron) -> Float[Tensor, " d_model"]:
    return w_out(model, n.layer).data[n.index].detach().clone()


def _write_row(model: Model, n: Neuron, row: Float[Tensor, " d_model"]) -> None:
    """Copy ``row`` into ``W_out[n.index]`` of layer ``n.layer``, in place."""
    with torch.no_grad():
        w_out(model, n.layer).data[n.index].copy_(row)


def read_value_vectors(model: Model, neurons: NeuronsLike) -> Float[Tensor, "neuron d_model"]:
    """The value vectors (``W_out`` rows) of ``neurons``, in order, as a detached copy."""
    ns = check_neurons(model, neurons)
    return torch.stack([_read_row(model, n) for n in ns])


class RestoreError(KnLensError, RuntimeError):
    """A row no longer holds what its edit wrote, so restoring it would silently discard that
    later change. Also a ``RuntimeError``, as it was before it had a class of its own."""


class RowEdit:
    """Handle of one applied ``W_out`` row change; :meth:`restore` undoes it bit for bit.

    Attributes:
        neurons: the edited neurons, in the order given.
        original: ``[neuron, d_model]`` the rows before the edit.
        written: ``[neuron, d_model]`` the rows the edit wrote.

    As a context manager it restores on exit. A row that was changed inside the ``with`` block
    after the edit (by the caller, or by a later edit not yet restored) is left as it is, every
    other row is restored, and the handle stays active for that row (:meth:`restore` with
    ``force=True`` puts it back). Leaving the block normally then raises :class:`RestoreError`
    naming the row; leaving it by an exception keeps that exception, with a note (and a logged
    warning) naming the rows left as they are.
    """

    def __init__(
        self, model: Model, neurons: Sequence[Neuron], original: Tensor, written: Tensor
    ) -> None:
        self.model = model
        self.neurons: tuple[Neuron, ...] = tuple(neurons)
        self.original = original
        self.written = written
        self._pending: list[int] = list(range(len(self.neurons)))  # rows not yet restored

    @property
    def active(self) -> bool:
        """True until every row has been restored."""
        return bool(self._pending)

    def changed(self) -> list[Neuron]:
        """The neurons (not yet restored) whose rows no longer hold what this edit wrote."""
        return [self.neurons[k] for k in self._changed()]

    def _changed(self) -> list[int]:
        return [
            k
            for k in self._pending
            if not same_bits(
                w_out(self.model, self.neurons[k].layer).data[self.neurons[k].index],
                self.written[k],
            )
        ]

    def _put_back(self, ks: Sequence[int]) -> None:
        _write_rows_atomic(
            self.model, [self.neurons[k] for k in ks], [self.original[k] for k in ks]
        )
        done = set(ks)
        self._pending = [k for k in self._pending if k not in done]

    def restore(self, *, force: bool = False) -> None:
        """Put the original rows back exactly. Calling it again is a no-op.

        Raises:
            RestoreError: (a ``RuntimeError`` and a ``KnLensError``) a row no longer holds what
                this edit wrote (another edit of the same rows was applied later and not
                restored first, or the row was changed by hand); nothing is restored then. Pass
                ``force=True`` to restore anyway.
        """
        if not self._pending:
            return
        if not force:
            changed = self.changed()
            if changed:
                raise RestoreError(
                    f"row of neuron {changed[0]} changed since this edit; restore later edits of "
                    "the same rows first (or pass force=True)"
                )
        self._put_back(self._pending)

    def restore_unchanged(self) -> list[Neuron]:
        """Restore every row that still holds what this edit wrote; return the neurons whose rows
        changed since (left as they are, and still pending)."""
        changed = self._changed()
        self._put_back([k for k in self._pending if k not in changed])
        return [self.neurons[k] for k in changed]

    def __enter__(self) -> RowEdit:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            left = self.restore_unchanged()
            if left:
                raise RestoreError(
                    f"{_names(left)} changed inside the `with` block after kn_lens edited "
                    "them; left as they are (every other row was restored): call "
                    ".restore(force=True) on the edit to put the original rows back"
                )
            return
        # Leaving by an exception: keep it (the caller's error is the one to see), restore what
        # can be restored, and say what could not.
        try:
            left = self.restore_unchanged()
        except Exception as e:  # restoring itself failed: the rows stay as they are
            _note(exc, f"kn_lens could not restore the W_out rows of {self!r}: {e!r}")
            return
        if left:
            _note(
                exc,
                f"kn_lens left the W_out rows of {_names(left)} as they are: they changed "
                "inside the `with` block after kn_lens edited them, so restoring them would "
                "discard that change (every other row was restored; call .restore(force=True) "
                "on the edit to put the original rows back)",
            )

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        shown = ", ".join(str(n) for n in self.neurons[:5])
        more = f", ... ({len(self.neurons)} total)" if len(self.neurons) > 5 else ""
        return f"RowEdit([{shown}{more}], {state})"


def _names(neurons: Sequence[Neuron]) -> str:
    shown = ", ".join(str(n) for n in neurons[:5])
    more = f" and {len(neurons) - 5} more" if len(neurons) > 5 else ""
    s = "s" if len(neurons) > 1 else ""
    return f"the row{s} of neuron{s} {shown}{more}"


def _note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` (``add_note``, Python 3.11+) and log it as a warning."""
    log.warning("%s", text)
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)


def same_bits(a: Tensor, b: Tensor) -> bool:
    """True when ``a`` and ``b`` hold the same bit patterns (so NaN matches the same NaN, and
    ``-0.0`` does not match ``0.0``): the exact test an undo needs, which ``==`` is not."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point or a.dtype.is_complex:
        as_int = _INT_OF_SIZE[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return torch.equal(a, b)


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _check_finite(name: str, t: Tensor) -> None:
    """``KnLensError`` naming ``name`` and the first non-finite entry of ``t``."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        where = f" at index {first}" if first else ""
        raise KnLensError(
            f"{name} holds a non-finite value ({float(t[first])}{where}): a W_out edit needs "
            "finite numbers; nothing was changed"
        )


def _write_rows_atomic(model: Model, neurons: Sequence[Neuron], rows: Sequence[Tensor]) -> None:
    """Write ``rows[k]`` into neuron ``k``'s row; on any exception, undo the rows already
    written."""
    saved = [_read_row(model, n) for n in neurons]
    done = 0
    try:
        for n, row in zip(neurons, rows, strict=False):
            _write_row(model, n, row)
            done += 1
    except BaseException:
        with torch.no_grad():
            for n, old in zip(neurons[:done], saved[:done], strict=False):
                w_out(model, n.layer).data[n.index].copy_(old)
        raise


def edit_rows(
    model: Model,
    neurons: NeuronsLike,
    fn: Callable[[Neuron, Tensor], Tensor],
) -> RowEdit:
    """Replace each neuron's value vector ``v`` by ``fn(neuron, v)``; all-or-nothing.

    ``fn`` receives a copy of the original row (``[d_model]``) and returns the new row, of the
    same shape. If ``fn`` or a write raises for any neuron, every row written so far is restored
    before the exception propagates. A ``TransformerBridge`` with processed weights is refused
    (:func:`kn_lens.models.family.check_editable`).
    """
    check_editable(model)
    ns = check_neurons(model, neurons)
    original = torch.stack([_read_row(model, n) for n in ns])
    d_model = original.shape[-1]
    written: list[Tensor] = []
    done = 0
    try:
        for k, n in enumerate(ns):
            new = fn(n, original[k].clone())
            if not isinstance(new, Tensor) or tuple(new.shape) != (d_model,):
                got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise KnLensError(f"new row for neuron {n} must be a [{d_model}] tensor, got {got}")
            new = new.detach().to(dtype=original.dtype, device=original.device)
            # An edit may carry a row's existing NaN/inf along, never introduce one.
            _check_finite(f"new row for neuron {n}", new[torch.isfinite(original[k])])
            _write_row(model, n, new)
            done += 1
            written.append(_read_row(model, n))
    except BaseException:
        with torch.no_grad():
            for n, old in zip(ns[:done], original[:done], strict=False):
                w_out(model, n.layer).data[n.index].copy_(old)
        raise
    return RowEdit(model, ns, original, torch.stack(written))


def set_rows(
    model: Model, neurons: NeuronsLike, values: Float[Tensor, "neuron d_model"]
) -> RowEdit:
    """Overwrite the value vectors of ``neurons`` with ``values`` (row k -> neuron k)."""
    ns = check_neurons(model, neurons)
    if values.shape[0] != len(ns):
        raise KnLensError(f"values has {values.shape[0]} rows for {len(ns)} neurons")
    _check_finite("values", values.detach())
    index = {n: k for k, n in enumerate(ns)}
    return edit_rows(model, ns, lambda n, v: values[index[n]])


def add_to_rows(
    model: Model,
    neurons: NeuronsLike,
    vector: Float[Tensor, " d_model"] | Float[Tensor, "neuron d_model"],
    scale: float | Sequence[float] | Float[Tensor, " neuron"] = 1.0,
) -> RowEdit:
    """Add ``scale[k] * vector`` (or ``scale[k] * vector[k]``) to neuron k's value vector.

    Args:
        vector: one ``[d_model]`` vector for all rows, or one row per neuron.
        scale: one number for all rows, or one per neuron.
    """
    ns = check_neurons(model, neurons)
    d_model = int(model.cfg.d_model)
    vec = vector.detach()
    if vec.shape[-1] != d_model:
        raise KnLensError(
            f"vector has size {vec.shape[-1]} in its last dimension, d_model is {d_model}"
        )
    if vec.dim() == 2 and vec.shape[0] != len(ns):
        raise KnLensError(f"vector has {vec.shape[0]} rows for {len(ns)} neurons")
    _check_finite("vector", vec)
    s = torch.as_tensor(scale, dtype=vec.dtype).detach().reshape(-1)
    _check_finite("scale", s)
    if s.numel() == 1:
        s = s.expand(len(ns))
    if s.numel() != len(ns):
        raise KnLensError(f"scale has {s.numel()} entries for {len(ns)} neurons")
    rows = vec.expand(len(ns), d_model) if vec.dim() == 1 else vec
    deltas = s[:, None].to(rows.device) * rows
    index = {n: k for k, n in enumerate(ns)}
    return edit_rows(model, ns, lambda n, v: v + deltas[index[n]].to(v.device, v.dtype))


def zero_rows(model: Model, neurons: NeuronsLike) -> RowEdit:
    """Set the value vectors of ``neurons`` to zero (the neurons then write nothing)."""
    return edit_rows(model, neurons, lambda n, v: torch.zeros_like(v))
