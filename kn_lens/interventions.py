"""Reading and changing feed-forward neuron activations where a fact is read, through
TransformerLens hooks.

A neuron ``Neuron(layer, index)`` is the value ``blocks.{layer}.mlp.hook_post[..., index]`` (the
activation after the non-linearity, which multiplies the row ``W_out[index]``). The paper's
interventions change it only at the read position: the ``[MASK]`` token of an encoder prompt, the
last prompt position of a decoder prompt (``read_pos`` of the family's encoded batch):

- **suppress**: set the activation to 0;
- **amplify**: multiply it by 2 (``PaperConfig.amplify_factor``).

Everything here works with hooks only, never by editing modules:

- :func:`neuron_hooks` builds TransformerLens ``fwd_hooks`` (``(name, fn)`` pairs) for
  ``model.hooks(...)`` or ``run_with_hooks``;
- :func:`scale_neurons`, :func:`suppress`, :func:`amplify` are context managers that attach those
  hooks and always remove them on exit, exceptions included;
- :func:`scaled_answer_probs` is the gold answer's probability under an intervention, batched
  safely;
- :func:`neuron_activations` reads chosen neurons' activations at each prompt's read position.

Positions are per prompt (the batch's ``read_pos``, shape ``[prompt]``), so a hook built for a
batch only fits a forward pass over exactly that batch; it raises ``KnLensError`` otherwise rather
than silently touching the wrong rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from kn_lens.errors import KnLensError
from kn_lens.models.family import Model, family_of
from kn_lens.neuron import Hook, HookList, Neuron, check_neurons, hook_name


def _by_layer(neurons: Sequence[Neuron]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for n in neurons:
        groups.setdefault(n.layer, [])
        if n.index not in groups[n.layer]:
            groups[n.layer].append(n.index)
    return groups


def neuron_hooks(
    model: Model,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    factor: float,
    *,
    positions: Int[Tensor, " prompt"] | None = None,
) -> HookList:
    """Forward hooks that multiply the chosen neurons' activations by ``factor``.

    Args:
        model: the model the hooks are for (used to check the neurons' range).
        neurons: ``(layer, index)`` pairs; duplicates are applied once.
        factor: 0 suppresses, 2 amplifies (any finite float works; NaN or inf raises
            ``KnLensError``, as it would only fill the forward pass with non-finite values).
        positions: ``[prompt]``; row ``b`` of the batch is changed only at position
            ``positions[b]`` (each prompt's ``[MASK]``). ``None`` changes every position.

    Returns:
        ``(hook name, fn)`` pairs for ``model.hooks(fwd_hooks=...)`` / ``run_with_hooks``. Each hook
        returns a modified copy of ``hook_post`` (``[batch, pos, d_mlp]``), so it is autograd-safe.
    """
    if not math.isfinite(factor):
        raise KnLensError(f"factor must be a finite number, got {factor!r}")
    groups = _by_layer(check_neurons(model, neurons, allow_empty=True, unique=False))
    pos_cpu = None if positions is None else torch.as_tensor(positions, dtype=torch.long)

    def make(idx_list: list[int]) -> Callable[..., Tensor]:
        idx_cpu = torch.tensor(idx_list, dtype=torch.long)

        def hook(
            act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint
        ) -> Float[Tensor, "batch pos d_mlp"]:
            idx = idx_cpu.to(act.device)
            out = act.clone()
            if pos_cpu is None:
                out[..., idx] = act[..., idx] * factor
                return out
            if act.shape[0] != pos_cpu.shape[0]:
                raise KnLensError(
                    f"{hook.name}: hook built for {pos_cpu.shape[0]} prompts but the batch has "
                    f"{act.shape[0]}; build the hooks per batch"
                )
            rows = torch.arange(act.shape[0], device=act.device)[:, None]
            pos = pos_cpu.to(act.device)[:, None]
            out[rows, pos, idx[None, :]] = act[rows, pos, idx[None, :]] * factor
            return out

        return hook

    return [(hook_name(layer), make(idx)) for layer, idx in sorted(groups.items())]


@contextmanager
def scale_neurons(
    model: Model,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    factor: float,
    *,
    positions: Int[Tensor, " prompt"] | None = None,
) -> Iterator[Model]:
    """Context manager: within it, the neurons' activations are multiplied by ``factor``.

    ``positions`` as in :func:`neuron_hooks`. The hooks are removed on exit, also when the body
    raises.

    Example::

        enc = encode(model, prompts)
        with scale_neurons(model, neurons, 0.0, positions=enc.mask_pos):
            logits = model(enc.tokens, one_zero_attention_mask=enc.attention_mask)
    """
    hooks = neuron_hooks(model, neurons, factor, positions=positions)
    with model.hooks(fwd_hooks=hooks):
        yield model


def suppress(
    model: Model,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    *,
    positions: Int[Tensor, " prompt"] | None = None,
) -> AbstractContextManager[Model]:
    """Context manager that sets the neurons' activations to 0 (at ``positions`` if given)."""
    return scale_neurons(model, neurons, 0.0, positions=positions)


def amplify(
    model: Model,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    *,
    positions: Int[Tensor, " prompt"] | None = None,
    factor: float = 2.0,
) -> AbstractContextManager[Model]:
    """Context manager that multiplies the neurons' activations by ``factor`` (default 2)."""
    return scale_neurons(model, neurons, factor, positions=positions)


def _enc(model: Any, prompts: Sequence[str] | Any) -> Any:
    return family_of(model).encode(model, prompts) if _is_text(prompts) else prompts


def _is_text(prompts: Any) -> bool:
    return isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts)


def scaled_answer_probs(
    model: Any,
    enc: Any,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    factor: float | None,
    *,
    batch_size: int = 64,
) -> Float[Tensor, " prompt"]:
    """:func:`scaled_answer_reads`' probabilities alone."""
    return scaled_answer_reads(model, enc, neurons, factor, batch_size=batch_size)[0]


def scaled_answer_reads(
    model: Any,
    enc: Any,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    factor: float | None,
    *,
    batch_size: int = 64,
) -> tuple[Float[Tensor, " prompt"], Int[Tensor, " prompt"]]:
    """``p(answer | prompt)`` for each prompt of ``enc`` (encoded with answers,
    :func:`kn_lens.readout.encode_facts`) while the neurons, at each prompt's read position only
    (the ``[MASK]``, or a decoder's last prompt position), are multiplied by ``factor``
    (``None``: no intervention).

    Batches are formed here so that each batch gets hooks with its own read positions. Returns
    the probabilities and the top-1 next token at the read position (CPU tensors).
    """
    fam = family_of(model)
    neurons = check_neurons(model, neurons, allow_empty=True, unique=False)
    out, top = [], []
    with torch.no_grad():
        for s in range(0, len(enc), batch_size):
            b = enc.select(list(range(s, min(s + batch_size, len(enc)))))
            hooks = (
                []
                if factor is None or not neurons
                else neuron_hooks(model, neurons, factor, positions=b.read_pos)
            )
            logits, logp = fam.readout(model, b, fwd_hooks=hooks)
            if logp is None:
                raise KnLensError("these prompts were encoded without answers")
            out.append(logp.float().exp().cpu())
            top.append(logits.argmax(-1).cpu())
    return torch.cat(out), torch.cat(top)


def neuron_activations(
    model: Model,
    prompts: Sequence[str] | Any,
    neurons: Sequence[Neuron] | Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    fwd_hooks: Sequence[Hook] = (),
) -> Float[Tensor, "prompt neuron"]:
    """Activations of ``neurons`` at each prompt's ``[MASK]``, read by hooks on ``hook_post``.

    Column ``j`` is ``neurons[j]`` (order kept, duplicates allowed). Extra ``fwd_hooks`` (e.g. from
    :func:`neuron_hooks`) run first, so an intervention on an earlier layer shows up here. Runs
    without autograd; returns a CPU tensor ``[prompt, neuron]``.
    """
    fam = family_of(model)
    enc = _enc(model, prompts)
    neurons = check_neurons(model, neurons, allow_empty=True, unique=False)
    out = torch.zeros(len(enc), len(neurons))
    if not neurons:
        return out
    layers = sorted({n.layer for n in neurons})
    cols = {layer: [j for j, n in enumerate(neurons) if n.layer == layer] for layer in layers}
    for s in range(0, len(enc), batch_size):
        rows = list(range(s, min(s + batch_size, len(enc))))
        b = enc.select(rows)
        seen: dict[int, Tensor] = {}

        def make_reader(
            layer: int, b: Any = b, seen: dict[int, Tensor] = seen
        ) -> Callable[..., None]:
            def read(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint) -> None:
                at_mask = act[
                    torch.arange(act.shape[0], device=act.device), b.read_pos.to(act.device)
                ]
                seen[layer] = at_mask.detach().float().cpu()

            return read

        readers = [(hook_name(layer), make_reader(layer)) for layer in layers]
        with torch.no_grad(), model.hooks(fwd_hooks=[*fwd_hooks, *readers]):
            fam.forward(model, b)
        for layer in layers:
            idx = torch.tensor([neurons[j].index for j in cols[layer]])
            out[torch.tensor(rows)[:, None], torch.tensor(cols[layer])[None, :]] = seen[layer][
                :, idx
            ]
    return out


# ----------------------------------------------------------------------------------------------
# Reading activations for many facts (web prompts), each with its own prompts and neurons
# ----------------------------------------------------------------------------------------------


def grouped_activations(
    model: Model,
    items: Sequence[tuple[Sequence[str], Sequence[Neuron]]],
    *,
    max_tokens: int = 512,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "web prompts",
) -> list[Tensor]:
    """For each ``(prompts, neurons)`` item, its neurons' activations at each prompt's ``[MASK]``.

    Items are packed into padded batches of about ``batch_size`` prompts (an item is never split);
    each batch is encoded once by the model's family (an encoder keeps ``[MASK]`` inside the
    ``max_tokens`` window, a decoder keeps a prompt's last tokens) and read once for the union of
    its items' neurons through :func:`neuron_activations` (hooks on ``blocks.{l}.mlp.hook_post``).

    Returns one CPU tensor ``[len(prompts), len(neurons)]`` per item (columns in the item's order).
    """
    out: list[Tensor | None] = [None] * len(items)
    groups: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i, (prompts, _neurons) in enumerate(items):
        if cur and size + len(prompts) > batch_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += len(prompts)
    if cur:
        groups.append(cur)
    it: Iterable[list[int]] = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc=desc)
    for group in it:
        prompts = [p for i in group for p in items[i][0]]
        union: list[Neuron] = []
        col: dict[Neuron, int] = {}
        for i in group:
            for n in check_neurons(model, items[i][1], allow_empty=True, unique=False):
                if n not in col:
                    col[n] = len(union)
                    union.append(n)
        if not prompts or not union:
            for i in group:
                out[i] = torch.zeros(len(items[i][0]), len(items[i][1]))
            continue
        enc = family_of(model).encode(model, prompts, max_tokens=max_tokens)
        acts = neuron_activations(model, enc, union, batch_size=max(batch_size, len(prompts)))
        row = 0
        for i in group:
            n_p = len(items[i][0])
            cols = [
                col[n] for n in check_neurons(model, items[i][1], allow_empty=True, unique=False)
            ]
            out[i] = acts[row : row + n_p][:, cols] if cols else torch.zeros(n_p, 0)
            row += n_p
    return [t for t in out if t is not None]
