"""The attribution options and their checks: method, baseline, objective, contrast, dtype, steps,
batch size. Each bad value is an :class:`kn_lens.errors.AttributionError` that names it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from kn_lens.config import BASELINE_NAMES, DTYPE_NAMES, METHOD_NAMES, OBJECTIVE_NAMES
from kn_lens.errors import AttributionError

__all__ = [
    "BASELINES",
    "DTYPES",
    "METHODS",
    "OBJECTIVES",
    "Method",
    "Objective",
    "check_positive_int",
    "contrast_list",
    "resolve_dtype",
]

Method = Literal["ig", "grad_x_act", "activation"]
Objective = Literal["prob", "logprob"]
#: ``ig``: integrated gradients (the paper's); ``grad_x_act``: attribution patching (one forward
#: and one backward pass); ``activation``: the paper's baseline, the raw activation.
METHODS: tuple[str, ...] = METHOD_NAMES
#: Named baselines; a ``[layer, d_mlp]`` tensor is accepted too.
BASELINES: tuple[str, ...] = BASELINE_NAMES
#: ``prob``: p(answer), the paper's; ``logprob``: log p(answer).
OBJECTIVES: tuple[str, ...] = OBJECTIVE_NAMES
#: The ``dtype`` values attribution takes, by name (``None`` = ``"float32"``, exact).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
assert tuple(DTYPES) == DTYPE_NAMES


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The run dtype for ``attribute(..., dtype=...)``: ``None`` for the exact default
    (``None``, ``torch.float32`` or ``"float32"``), else ``torch.bfloat16`` / ``torch.float16``
    (also by name). :class:`AttributionError` names any other value."""
    if dtype is None:
        return None
    by_value = {v: v for v in DTYPES.values()}
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else by_value.get(dtype)
    if resolved is None:
        raise AttributionError(f"dtype must be None or one of {', '.join(DTYPES)}, got {dtype!r}")
    return None if resolved == torch.float32 else resolved


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    """:class:`AttributionError` unless ``value`` is a positive int (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttributionError(f"{name} must be a positive integer, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise AttributionError(f"unknown {name} {value!r}; use one of {tuple(choices)}")


def contrast_list(contrast: Any) -> list[Any]:
    """The contrast answers as a list: ``None`` -> ``[]``; one answer (a string, a token id) ->
    ``[it]``; a list of answers as given (each a string, a token id, or a list of token ids).
    :class:`AttributionError` for an empty list."""
    if contrast is None:
        return []
    if isinstance(contrast, (str, int)) or hasattr(contrast, "shape"):
        return [contrast]
    items = list(contrast)
    if not items:
        raise AttributionError("contrast is empty: give one or more other answers, or None")
    return items
