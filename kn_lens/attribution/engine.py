"""The one attribution engine: rows, chunks, the alpha grid, baselines, objectives, contrasts and
precision, written once for every model family.

A family (:class:`kn_lens.models.protocol.Family`) supplies only what differs: how prompts and
answers become a batch, the clean pass and what it keeps, the forward resumed from layer ``l``
with scaled rows, the full forward's logits where the answer is read, and the answer's
log-probability there. See :mod:`kn_lens.attribution` for the mathematics.

How the work is laid out (every score is exact: the same numbers as one full forward and backward
pass per prompt, layer and step):

- prompts are sorted by length and cut into groups of at most ``batch_size`` (bounding the clean
  pass's cache); a group's rows are ``prompt x layer x alpha``, in that order, so that a chunk of
  at most ``batch_size`` rows mostly holds one prompt (little padding); inside a chunk they are
  stably sorted by layer, so that the rows scaled at or below layer ``j`` are a prefix of the
  chunk and rows join bottom-up;
- autograd records only what depends on the scaled activations (one leaf tensor per chunk), and
  the gradient is taken with respect to that leaf alone;
- answers that feed the model the same input (every encoder answer; a decoder's one-token
  answers, or answers that differ only in their last token) share the pass: the objective of a
  row adds up their terms;
- rows of several facts can share a pass (:func:`attribute_facts`), which fills a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens.attribution.options import (
    BASELINES,
    METHODS,
    OBJECTIVES,
    check_choice,
    check_positive_int,
    contrast_list,
    resolve_dtype,
)
from kn_lens.config import default_batch_size
from kn_lens.errors import AttributionError
from kn_lens.models.family import family_of
from kn_lens.models.protocol import Family
from kn_lens.neuron import HookList, hook_name, model_shape, no_param_grads, resolve_layers

__all__ = ["Progress", "attribute", "attribute_facts", "reporting_progress"]

#: ``progress(rows_done, rows_total)``: called after every chunk of gradient rows (IG: a row is
#: one prompt at one alpha for one layer; grad_x_act: one prompt), so a long fact shows where it
#: is. Once per chunk: it costs nothing next to the chunk's forward and backward pass.
Progress = Callable[[int, int], None]

_AMBIENT: ContextVar[Progress | None] = ContextVar("kn_lens_attribution_progress", default=None)


@contextlib.contextmanager
def reporting_progress(progress: Progress | None) -> Iterator[None]:
    """Within the block, every :func:`attribute` / :func:`attribute_facts` call given no
    ``progress`` of its own reports to this one (the pipeline watches each fact this way, through
    scorers that do not pass it along)."""
    token = _AMBIENT.set(progress)
    try:
        yield
    finally:
        _AMBIENT.reset(token)


class _Rows:
    """Counts gradient rows for a :data:`Progress` callback."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


class _Terms:
    """The objective's answers for one pass: their batches (all with the same model input) and
    weights; ``value(logits, rows)`` is ``sum_v w_v f(log p_v)``, ``f`` = exp or identity."""

    def __init__(
        self, family: Family[Any, Any], batches: list[Any], weights: list[float], objective: str
    ) -> None:
        self.family, self.batches, self.weights = family, batches, weights
        self.objective = objective

    def value(self, logits: Tensor, rows: Tensor) -> Tensor:
        total: Tensor | None = None
        for batch, w in zip(self.batches, self.weights, strict=True):
            logp = self.family.answer_logprob(logits, batch, rows)
            term = (logp.exp() if self.objective == "prob" else logp) * w
            total = term if total is None else total + term
        assert total is not None
        return total


def _autocast(device: torch.device, model_dtype: torch.dtype, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on the model's device type; nothing for ``None``."""
    if dtype is None or dtype == model_dtype:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _ig(
    family: Family[Any, Any],
    model: Any,
    batch: Any,
    terms: _Terms,
    layers: list[int],
    steps: int,
    batch_size: int,
    base: Tensor | None,
    lower: AbstractContextManager[Any],
    rows: _Rows,
) -> Tensor:
    """Integrated gradients ``[prompt, len(layers), d_mlp]`` for one group of prompts, from
    ``base`` (``[prompt, layer, d_mlp]``; ``None`` = zero); each chunk is counted in ``rows``."""
    clean = family.clean_pass(model, batch, layers, keep_resid=True)
    acts = clean.acts
    dev = acts.device
    n_prompts, n_sel = acts.shape[0], len(layers)
    n_layers = model.cfg.n_layers
    b = torch.zeros_like(acts) if base is None else base.to(dev, acts.dtype)
    diff = acts - b

    prompt = torch.arange(n_prompts, device=dev).repeat_interleave(n_sel * steps)
    sel = torch.arange(n_sel, device=dev).repeat_interleave(steps).repeat(n_prompts)
    k = torch.arange(steps, device=dev).repeat(n_prompts * n_sel)
    block = torch.tensor(layers, device=dev)[sel]
    # Sums and the alpha grid in at least float32, so a half-precision model only rounds what its
    # own forward and backward passes round.
    acc = torch.promote_types(acts.dtype, torch.float32)
    alpha = k.to(acc) / steps
    grad_sum = torch.zeros(n_prompts * n_sel, acts.shape[-1], dtype=acc, device=dev)
    n_rows = len(sel)
    with (
        no_param_grads(model),
        torch.enable_grad(),
        family.scaled_run(model, batch, clean, layers) as start,
        lower,
    ):
        for c0 in range(0, n_rows, batch_size):
            c1 = min(c0 + batch_size, n_rows)
            perm = c0 + torch.sort(block[c0:c1], stable=True).indices
            c_sel, c_prompt = sel[perm], prompt[perm]
            point = b[c_prompt, c_sel] + alpha[perm, None] * diff[c_prompt, c_sel]
            leaf = point.to(acts.dtype).requires_grad_(True)
            run = start(c_prompt, c_sel, leaf)
            here = block[perm].tolist()
            resid: Tensor | None = None
            for j in range(here[0], n_layers):
                join = None
                if j in here:
                    join = slice(here.index(j), len(here) - here[::-1].index(j))
                resid = run.step(j, resid, join)
            assert resid is not None
            value = terms.value(run.logits(resid), c_prompt)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
            grad_sum.index_add_(0, c_prompt * n_sel + c_sel, grad.to(acc))
            rows.add(c1 - c0)
    return diff * grad_sum.view(n_prompts, n_sel, -1) / steps


def _grad_x_act(
    family: Family[Any, Any],
    model: Any,
    batch: Any,
    terms: _Terms,
    layers: list[int],
    base: Tensor | None,
    lower: AbstractContextManager[Any],
) -> Tensor:
    """``(a - b) * d objective / d a`` at the clean activation, every scored layer from one forward
    and one backward pass: a zero probe added to ``hook_post`` at the read position takes the
    gradient (the total derivative, through every later layer)."""
    dev = family.device(model)
    read = batch.read_pos.to(dev)
    n = len(batch)
    rows = torch.arange(n, device=dev)
    d_mlp = model_shape(model)[1]
    probes = {
        layer: torch.zeros(n, d_mlp, device=dev, dtype=model.cfg.dtype, requires_grad=True)
        for layer in layers
    }
    acts: dict[int, Tensor] = {}

    def probe_at(layer: int) -> Any:
        def add_probe(act: Tensor, hook: Any) -> Tensor:
            acts[layer] = act[rows, read].detach()
            out = act.clone()
            out[rows, read] = out[rows, read] + probes[layer].to(act.dtype)
            return out

        return add_probe

    hooks: HookList = [(hook_name(layer), probe_at(layer)) for layer in layers]
    with no_param_grads(model), torch.enable_grad(), model.hooks(fwd_hooks=hooks), lower:
        logits = family.segment_logits(model, batch)
        value = terms.value(logits, rows)
    grads = torch.autograd.grad(value.sum(), [probes[layer] for layer in layers])
    a = torch.stack([acts[layer] for layer in layers], dim=1)
    b = torch.zeros_like(a) if base is None else base.to(dev, a.dtype)
    g = torch.stack(grads, dim=1)
    acc = torch.promote_types(a.dtype, torch.float32)
    return ((a - b).to(acc) * g.to(acc)).to(a.dtype)


def _activations(
    family: Family[Any, Any], model: Any, batch: Any, layers: list[int], order: list[list[int]]
) -> Tensor:
    """Clean activations ``[prompt, len(layers), d_mlp]`` at the read position (no gradients)."""
    out: Tensor | None = None
    for idx in order:
        acts = family.clean_pass(model, family.select(batch, idx), layers, keep_resid=False).acts
        if out is None:
            out = torch.empty(len(batch), *acts.shape[1:], dtype=acts.dtype)
        out[torch.tensor(idx)] = acts.detach().cpu()
    assert out is not None
    return out


def _baseline_rows(
    baseline: Any, acts: Tensor | None, fact_of: list[int], layers: list[int], n_layers: int
) -> Tensor | None:
    """The baseline of every prompt row ``[prompt, layer, d_mlp]`` (``None`` for zero)."""
    if isinstance(baseline, str):
        check_choice("baseline", baseline, BASELINES)
        if baseline == "zero":
            return None
        assert acts is not None
        facts = torch.tensor(fact_of)
        means = torch.stack([acts[facts == f].mean(0) for f in range(max(fact_of) + 1)])
        return means[facts]
    if not isinstance(baseline, Tensor):
        raise AttributionError(
            f"baseline must be 'zero', 'mean' or a [layer, d_mlp] tensor, got {baseline!r}"
        )
    assert acts is not None
    d_mlp = acts.shape[-1]
    if baseline.ndim != 2 or baseline.shape[1] != d_mlp:
        raise AttributionError(
            f"a baseline tensor must have shape [layer, d_mlp={d_mlp}], got {tuple(baseline.shape)}"
        )
    if baseline.shape[0] == len(layers):
        rows = baseline
    elif baseline.shape[0] == n_layers:
        rows = baseline[layers]
    else:
        raise AttributionError(
            f"a baseline tensor has one row per scored layer ({len(layers)}) or per model layer "
            f"({n_layers}), got {baseline.shape[0]}"
        )
    if not bool(torch.isfinite(rows).all()):
        raise AttributionError("the baseline tensor holds NaN or infinite values")
    return rows.detach().cpu().to(acts.dtype).expand(len(fact_of), -1, -1)


# Gradients need autograd: a caller's torch.inference_mode() is lifted here (the batches are made
# inside, so none is an inference tensor); weights made under it are refused below.
@torch.inference_mode(False)
def attribute_facts(
    model: Any,
    facts: Sequence[tuple[Sequence[Any], Any]],
    *,
    steps: int = 20,
    method: str = "ig",
    baseline: str | Float[Tensor, "layer d_mlp"] = "zero",
    objective: str = "prob",
    contrast: Sequence[Any] | None = None,
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
    dtype: torch.dtype | str | None = None,
    progress: Progress | None = None,
) -> list[Float[Tensor, "prompt layer d_mlp"]]:
    """:func:`kn_lens.attribute` for several facts at once, their rows sharing passes.

    Args:
        facts: ``(prompts, answer)`` pairs, one per fact.
        contrast: ``None``, or one list of contrast answers per fact (all of the same length).
        (the other arguments as in :func:`kn_lens.attribute`; ``baseline="mean"`` averages over
        each fact's own prompts).
        progress: ``progress(rows_done, rows_total)`` after every chunk (:data:`Progress`);
            default: the one :func:`reporting_progress` set, if any.

    Returns:
        One ``[prompts of the fact, len(layers), d_mlp]`` tensor per fact, on the CPU, in the
        model's dtype.
    """
    family = family_of(model)
    if method != "activation" and any(p.is_inference() for p in model.parameters()):
        raise AttributionError(
            "the model's weights were made under torch.inference_mode(), so no gradient can flow "
            "through them: load the model outside inference mode (calling kn_lens inside it is "
            "fine)"
        )
    check_choice("method", method, METHODS)
    check_choice("objective", objective, OBJECTIVES)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size, allow_none=True)
    run_dtype = resolve_dtype(dtype)
    if not facts:
        raise AttributionError("no facts given")
    per_fact = [[] for _ in facts] if contrast is None else [contrast_list(c) for c in contrast]
    if len(per_fact) != len(facts):
        raise AttributionError(f"{len(facts)} facts but {len(per_fact)} contrast lists")
    n_contrast = len(per_fact[0])
    if any(len(c) != n_contrast for c in per_fact):
        raise AttributionError("every fact needs the same number of contrast answers")
    sel_layers = resolve_layers(model, layers)
    dev = family.device(model)
    if batch_size is None:
        batch_size = default_batch_size(dev)

    prompts: list[Any] = []
    answers: list[list[Any]] = [[] for _ in range(1 + n_contrast)]
    fact_of: list[int] = []
    for f, (fact_prompts, answer) in enumerate(facts):
        if isinstance(fact_prompts, str):
            raise AttributionError(f"fact {f}: prompts must be a list of prompts, not one string")
        if len(fact_prompts) == 0:
            raise AttributionError(f"fact {f}: no prompts given")
        for p in fact_prompts:
            prompts.append(p)
            fact_of.append(f)
            answers[0].append(answer)
            for v, other in enumerate(per_fact[f]):
                answers[1 + v].append(other)
    batches = [family.attribution_batch(model, prompts, a) for a in answers]
    weights = [1.0] + [-1.0 / max(n_contrast, 1)] * n_contrast

    # Answers whose batches feed the model the same tokens share a pass.
    passes: list[list[int]] = []
    for v, bat in enumerate(batches):
        for group in passes:
            first = batches[group[0]].tokens
            if first.shape == bat.tokens.shape and bool(torch.equal(first, bat.tokens)):
                group.append(v)
                break
        else:
            passes.append([v])

    lengths = batches[0].attention_mask.sum(-1).tolist()
    by_length = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    order = [by_length[g : g + batch_size] for g in range(0, len(by_length), batch_size)]

    need_acts = method == "activation" or not (isinstance(baseline, str) and baseline == "zero")
    acts = _activations(family, model, batches[0], sel_layers, order) if need_acts else None
    if method == "activation":
        assert acts is not None
        out = acts
    else:
        base = _baseline_rows(baseline, acts, fact_of, sel_layers, model.cfg.n_layers)
        per_prompt = len(sel_layers) * steps if method == "ig" else 1
        rows = _Rows(progress or _AMBIENT.get(), len(prompts) * per_prompt * len(passes))
        model_dtype = model.cfg.dtype
        out = torch.zeros(len(prompts), len(sel_layers), model_shape(model)[1], dtype=model_dtype)
        for idx in order:
            i_t = torch.tensor(idx)
            b_rows = None if base is None else base[i_t]
            for group in passes:
                subs = [family.select(batches[v], idx) for v in group]
                terms = _Terms(family, subs, [weights[v] for v in group], objective)
                lower = _autocast(dev, model_dtype, run_dtype)
                if method == "grad_x_act":
                    scores = _grad_x_act(family, model, subs[0], terms, sel_layers, b_rows, lower)
                    rows.add(len(idx))
                else:
                    scores = _ig(
                        family,
                        model,
                        subs[0],
                        terms,
                        sel_layers,
                        steps,
                        batch_size,
                        b_rows,
                        lower,
                        rows,
                    )
                out[i_t] += scores.detach().to("cpu", model_dtype)
    counts = [fact_of.count(f) for f in range(len(facts))]
    return list(torch.split(out, counts))


def attribute(
    model: Any,
    prompts: Sequence[Any],
    target: Any,
    *,
    steps: int = 20,
    method: str = "ig",
    baseline: str | Float[Tensor, "layer d_mlp"] = "zero",
    objective: str = "prob",
    contrast: Any = None,
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
    dtype: torch.dtype | str | None = None,
    progress: Progress | None = None,
) -> Float[Tensor, "prompt layer d_mlp"]:
    """Attribution scores of every MLP neuron where the fact is read, for answer ``target``.

    The neuron is ``blocks.{l}.mlp.hook_post[..., i]`` at the read position: the ``[MASK]`` of an
    encoder prompt, the last prompt position of a decoder prompt. With ``a`` the clean activation
    vector of layer ``l`` there, ``b`` the baseline and ``f`` the objective (every other layer and
    position keeps its natural value):

    - ``method="ig"`` (the paper's): ``(a_i - b_i) * (1/m) * sum_{k<m} df(b + alpha_k (a - b)) /
      da_i`` with ``alpha_k = k/m`` (a left Riemann sum, ``m = steps``). The scores of a layer add
      up to about ``f(a) - f(b)`` (completeness), the closer the larger ``m``.
    - ``method="grad_x_act"``: ``(a_i - b_i) * df(a)/da_i``, attribution patching: one forward and
      one backward pass for all layers.
    - ``method="activation"``: ``a_i``, the paper's baseline (no objective, no gradient).

    Objectives: ``"prob"`` is ``p(answer)`` (the paper's); ``"logprob"`` is ``log p(answer)``
    (for a decoder the sum over its teacher-forced answer tokens; for one token the logit less the
    log-normaliser). With ``contrast`` answers ``c_1 .. c_C`` the objective is
    ``f(answer) - (1/C) sum_j f(c_j)``; since integrated gradients is linear in the objective, the
    scores are the difference of the separate attributions (with ``"logprob"``, the logit
    difference common in interpretability work).

    Args:
        model: a ``HookedEncoder`` or ``HookedTransformer`` with ``tokenizer``
            (:func:`kn_lens.load_model`); runs on its device.
        prompts: ``P`` prompts: encoders, each with exactly one ``[MASK]``; decoders, the text
            before the answer (or token id lists, used as given).
        target: the answer: encoders, a string that is one vocabulary token, or a token id;
            decoders, the answer text (several tokens allowed) or its token ids.
        steps: ``m``, the number of Riemann steps (``ig`` only).
        method: ``"ig"``, ``"grad_x_act"`` or ``"activation"``.
        baseline: ``"zero"`` (the paper's), ``"mean"`` (the mean activation at the read position
            over the prompts given: AMIG, Chen et al. 2024) or a ``[layer, d_mlp]`` tensor (one
            row per scored layer, or per model layer).
        objective: ``"prob"`` or ``"logprob"``.
        contrast: other answers (one, or a list; each as ``target``), or ``None``.
        batch_size: at most this many rows (one prompt at one alpha for one layer) per
            forward/backward pass; bounds memory, does not change the result. Default
            :func:`kn_lens.config.default_batch_size` of the model's device.
        layers: which layers to score (default all), in the order the output lists them.
        dtype: ``None`` or ``torch.float32``: exact. ``torch.bfloat16`` / ``torch.float16`` (or
            their names): the gradient passes run under ``torch.autocast`` in that dtype; the
            clean pass, the alpha grid and the gradient sums stay in float32. An approximation:
            check it against float32 on your facts.
        progress: ``progress(rows_done, rows_total)``, called after every chunk of gradient rows
            (ig: a row is one prompt at one alpha for one layer; grad_x_act: one prompt), e.g.
            to drive a progress bar on a long fact.

    Returns:
        ``[P, len(layers), d_mlp]`` scores on the CPU, in the model's dtype; ``[p, i, n]`` is
        neuron ``n`` of layer ``layers[i]`` for prompt ``p``.

    Raises:
        AttributionError: (a :class:`kn_lens.KnLensError`) a bad prompt, answer or option value;
            the message names it.
    """
    contrasts = None if contrast is None else [contrast_list(contrast)]
    (out,) = attribute_facts(
        model,
        [(prompts, target)],
        steps=steps,
        method=method,
        baseline=baseline,
        objective=objective,
        contrast=contrasts,
        batch_size=batch_size,
        layers=layers,
        dtype=dtype,
        progress=progress,
    )
    return out
