"""Which TransformerLens is installed, and which backend a model runs on.

kn_lens works with TransformerLens 3.9 and 4.x:

- ``"hooked"``: TransformerLens 3's ``HookedEncoder`` / ``HookedTransformer`` (the default on 3.x,
  the classes SAELens 6 uses). TransformerLens 4 removed them.
- ``"bridge"``: TransformerLens' ``TransformerBridge`` around the Hugging Face model (3.9 ships it
  too; on 4.x it is the only backend and the default). kn_lens keeps its weights raw (no weight
  processing), since edits write ``W_out`` rows.

The version is read from the installed distribution (:mod:`importlib.metadata`): on 4.x even
``hasattr(transformer_lens, "HookedEncoder")`` raises.

This module is the only one that says which classes exist; :mod:`kn_lens.models.family` is the
only one that looks at a model's class.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any, TypeAlias

from transformer_lens.model_bridge import TransformerBridge

from kn_lens.errors import KnLensError

__all__ = [
    "BACKENDS",
    "DecoderModel",
    "EncoderModel",
    "HAS_HOOKED_CLASSES",
    "TL_MAJOR",
    "TL_VERSION",
    "TransformerBridge",
    "default_backend",
    "is_bridge",
    "official_model_name",
    "resolve_backend",
]

#: The installed TransformerLens version, e.g. ``"3.9.0"``.
TL_VERSION: str = importlib.metadata.version("transformer-lens")
#: Its major version (3 or 4).
TL_MAJOR: int = int(TL_VERSION.split(".")[0])
#: Whether ``HookedEncoder`` / ``HookedTransformer`` exist (TransformerLens < 4).
HAS_HOOKED_CLASSES: bool = TL_MAJOR < 4
#: The backends :func:`kn_lens.load_model` knows.
BACKENDS = ("hooked", "bridge")

if TYPE_CHECKING or HAS_HOOKED_CLASSES:
    from transformer_lens import HookedEncoder, HookedTransformer

    #: An encoder of either backend.
    EncoderModel: TypeAlias = HookedEncoder | TransformerBridge
    #: A decoder of either backend.
    DecoderModel: TypeAlias = HookedTransformer | TransformerBridge
else:  # TransformerLens 4: the bridge only
    EncoderModel = TransformerBridge
    DecoderModel = TransformerBridge


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (the one class test besides
    :func:`kn_lens.models.family.family_of`, for the few places below the families that differ
    by backend: the encoder's body and masked-LM head, :mod:`kn_lens.prompts`)."""
    return isinstance(model, TransformerBridge)


def default_backend() -> str:
    """``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on 4.x."""
    return "hooked" if HAS_HOOKED_CLASSES else "bridge"


def resolve_backend(backend: Any) -> str:
    """``backend`` checked: ``None`` is :func:`default_backend`; ``"hooked"`` needs
    TransformerLens 3.x. A :class:`KnLensError` naming the value otherwise."""
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise KnLensError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "hooked" and not HAS_HOOKED_CLASSES:
        raise KnLensError(
            f"backend 'hooked' needs TransformerLens 3.x (HookedEncoder / HookedTransformer); "
            f"TransformerLens {TL_VERSION} is installed, whose backend is 'bridge' (the default)"
        )
    return str(backend)


def official_model_name(name: str) -> str:
    """The Hugging Face repository of TransformerLens model name ``name`` (``"bert-base-cased"`` ->
    ``"google-bert/bert-base-cased"``), on either TransformerLens line (4.x moved the table to
    ``transformer_lens.supported_models``).

    Raises:
        KnLensError: TransformerLens does not know the name (the message names it).
    """
    try:
        from transformer_lens.supported_models import (  # type: ignore[attr-defined,unused-ignore]
            get_official_model_name,
        )
    except ImportError:  # TransformerLens 3.x
        from transformer_lens.loading_from_pretrained import get_official_model_name
    try:
        return str(get_official_model_name(name))
    except Exception:  # noqa: BLE001 - TransformerLens raises ValueError or KeyError
        raise KnLensError(f"TransformerLens knows no model named {name!r}") from None
