"""Which family a model belongs to: :func:`family_of`, the only place that looks at a model's
class. The interface a family implements is :class:`kn_lens.models.protocol.Family`."""

from __future__ import annotations

from typing import Any

from transformer_lens import HookedEncoder, HookedTransformer

from kn_lens.errors import KnLensError
from kn_lens.models.decoder.family import DecoderFamily
from kn_lens.models.encoder.family import EncoderFamily
from kn_lens.models.protocol import BagCheck, Batch, Family

__all__ = ["BagCheck", "Batch", "Family", "Model", "family_of"]

#: A model of either family.
Model = HookedEncoder | HookedTransformer

_ENCODER = EncoderFamily()
_DECODER = DecoderFamily()


def family_of(model: Any) -> Family[Any, Any]:
    """The family of ``model``: :class:`~kn_lens.models.encoder.EncoderFamily` for a
    ``HookedEncoder``, :class:`~kn_lens.models.decoder.DecoderFamily` for a
    ``HookedTransformer``; a :class:`KnLensError` for anything else."""
    if isinstance(model, HookedTransformer):
        return _DECODER
    if isinstance(model, HookedEncoder):
        return _ENCODER
    raise KnLensError(
        f"expected a HookedEncoder or HookedTransformer (kn_lens.load_model), not "
        f"{type(model).__name__}"
    )
