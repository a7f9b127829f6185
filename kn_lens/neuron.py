"""The neuron concept: :class:`Neuron`, its TransformerLens hook name, and its one validator.

A knowledge neuron is a feed-forward neuron ``(layer, index)``, layer first. Its activation is
``blocks.{layer}.mlp.hook_post[..., index]`` (:func:`hook_name`) and its value vector is the row
``blocks[layer].mlp.W_out[index]``. For gated MLPs ``hook_post`` is the gated product, so the same
row is still the neuron's value vector. Every module that takes neurons checks them with
:func:`check_neurons`.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, runtime_checkable

from kn_lens.errors import KnLensError


class Neuron(NamedTuple):
    """Neuron ``index`` of layer ``layer``.

    Its activation is ``blocks.{layer}.mlp.hook_post[..., index]`` and its value vector is the row
    ``blocks[layer].mlp.W_out[index]`` (shape ``[d_model]``).
    """

    layer: int
    # The paper's (and TransformerLens') name, so it shadows tuple.index (no caller needs that).
    index: int  # type: ignore[assignment]  # the shadowing above is on purpose

    def __str__(self) -> str:  # "L3.N512"
        return f"L{self.layer}.N{self.index}"


#: One TransformerLens forward hook: ``(hook point name or name filter, function)``.
Hook = tuple[str | Callable[..., Any], Callable[..., Any]]
#: TransformerLens ``fwd_hooks``: a list of :data:`Hook` pairs.
HookList = list[Hook]

#: Neurons as given by a caller: :class:`Neuron` records or plain ``(layer, index)`` pairs.
NeuronsLike = Iterable[Any]


@runtime_checkable
class ModelConfig(Protocol):
    """The parts of a TransformerLens ``HookedTransformerConfig`` that neurons depend on."""

    @property
    def n_layers(self) -> int: ...

    @property
    def d_mlp(self) -> int | None: ...


@runtime_checkable
class HasConfig(Protocol):
    """A TransformerLens model (``HookedEncoder``, ``HookedTransformer``) as neurons see it: its
    ``cfg``. A protocol rather than the classes, so that this bottom layer imports no torch."""

    @property
    def cfg(self) -> ModelConfig: ...


def model_shape(model: HasConfig) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` of a TransformerLens model; a ``KnLensError`` when it has no MLPs."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if d_mlp is None:
        raise KnLensError("the model has no MLP layers (cfg.d_mlp is None): no neurons to study")
    return int(n_layers), int(d_mlp)


def hook_name(layer: int) -> str:
    """The TransformerLens hook point of layer ``layer``'s neuron activations."""
    return f"blocks.{layer}.mlp.hook_post"


def as_int(x: Any) -> int:
    """``x`` as an ``int`` when it is an integer (``int``, a numpy or 0-d torch integer);
    ``TypeError`` for anything else: a ``bool``, a float (even ``3.0``), a string."""
    if isinstance(x, bool):
        raise TypeError(f"{x!r} is a bool, not an integer")
    return operator.index(x)


def check_neurons(
    model: HasConfig, neurons: NeuronsLike, *, allow_empty: bool = False, unique: bool = True
) -> list[Neuron]:
    """Validate ``neurons`` against ``model`` and return them as a list of :class:`Neuron`.

    Args:
        model: anything with ``cfg.n_layers`` and ``cfg.d_mlp`` (a TransformerLens model).
        neurons: :class:`Neuron` records or ``(layer, index)`` pairs of ints.
        allow_empty: accept an empty collection (reading no neurons is fine; editing none is not).
        unique: refuse a neuron that appears twice (weight edits); with ``False`` repeats are kept
            as given, for callers that apply each neuron once anyway (hooks).

    Raises:
        KnLensError: (a ``ValueError``) the collection is empty (unless ``allow_empty``), an
            item is not a ``(layer, index)`` pair of ints, a layer is outside ``[0, n_layers)``
            or an index outside ``[0, d_mlp)``, or (with ``unique``) a neuron repeats. The
            message names the neuron.
    """
    if isinstance(neurons, (str, bytes)) or hasattr(neurons, "shape"):
        raise KnLensError(f"neurons must be a collection of (layer, index) pairs, got {neurons!r}")
    items = list(neurons)
    if not items and not allow_empty:
        raise KnLensError("empty neuron set: at least one (layer, index) neuron is needed")
    n_layers, d_mlp = model_shape(model)
    out: list[Neuron] = []
    seen: set[Neuron] = set()
    for item in items:
        try:
            layer, index = item
            n = Neuron(as_int(layer), as_int(index))
        except (TypeError, ValueError):
            raise KnLensError(f"neuron {item!r} is not a (layer, index) pair of ints") from None
        if not 0 <= n.layer < n_layers:
            raise KnLensError(
                f"neuron {n} ({tuple(n)}) out of range: layer must be in [0, {n_layers}) for "
                "this model"
            )
        if not 0 <= n.index < d_mlp:
            raise KnLensError(
                f"neuron {n} ({tuple(n)}) out of range: index must be in [0, {d_mlp}) for "
                "this model"
            )
        if unique and n in seen:
            raise KnLensError(f"neuron {n} ({tuple(n)}) appears more than once in the neuron set")
        seen.add(n)
        out.append(n)
    return out


def neurons_from_json(value: Any, source: str | os.PathLike[str]) -> list[Neuron]:
    """Neurons as read from a JSON file (``[[layer, index], ...]``), each a pair of integers.

    JSON has no integer type of its own, so ``[2.7, 16.9]``, ``[true, 3]`` and ``["2", "16"]``
    parse; they are refused here, never rounded. ``source`` names where the value was read (a
    file, or ``"FILE: neurons of P19/3"``) in the ``KnLensError``. Ranges are checked later, against
    a model, by :func:`check_neurons`.
    """
    if not isinstance(value, list):
        raise KnLensError(f"{source}: expected a list of [layer, index] pairs, got {value!r}")
    out: list[Neuron] = []
    for item in value:
        try:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise TypeError
            out.append(Neuron(as_int(item[0]), as_int(item[1])))
        except TypeError:
            raise KnLensError(
                f"{source}: neuron {item!r} is not a [layer, index] pair of integers; the file "
                "was changed by hand or is corrupt"
            ) from None
    return out


def neuron_map_from_json(
    value: Any, source: str | os.PathLike[str]
) -> dict[str, dict[str, list[Neuron]]]:
    """The ``"neurons"`` mapping of a neurons file, ``{method: {bag key: [[layer, index], ...]}}``,
    as :class:`Neuron` lists; a ``KnLensError`` naming ``source`` (the file) when the mapping is
    missing (``None``), is not nested that way, or holds a neuron that is not a pair of integers.
    """
    if value is None:
        raise KnLensError(f'{source} has no "neurons" mapping; run `kn-lens identify` again')
    if not isinstance(value, dict):
        raise KnLensError(f'{source}: "neurons" must map a method to its neurons, got {value!r}')
    out: dict[str, dict[str, list[Neuron]]] = {}
    for method, by_key in value.items():
        if not isinstance(by_key, dict):
            raise KnLensError(f'{source}: "neurons"/{method!r} must map a fact to its neurons')
        out[str(method)] = {
            str(k): neurons_from_json(v, f"{source}: {method} neurons of {k}")
            for k, v in by_key.items()
        }
    return out


def resolve_layers(model: HasConfig, layers: Sequence[int] | None) -> list[int]:
    """The layers to score, in the caller's order (default all); a ``KnLensError`` naming a layer
    that is not an index of the model, a repeated layer, or an empty list."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise KnLensError(f"layer {layer!r} is not a layer index of this {n}-layer model")
        if layer in out:
            raise KnLensError(f"layer {layer} is listed twice in layers={list(layers)}")
        out.append(layer)
    if not out:
        raise KnLensError("layers is empty")
    return out


@contextmanager
def no_param_grads(model: Any) -> Iterator[None]:
    """Turn ``requires_grad`` off for ``model.parameters()`` while inside; restore it on exit.

    Attribution takes gradients with respect to neuron activations only, so autograd need not keep
    what a weight gradient would use.
    """
    switched = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in switched:
            p.requires_grad_(False)
        yield
    finally:
        for p in switched:
            p.requires_grad_(True)
