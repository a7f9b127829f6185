"""Which family a model belongs to: :func:`family_of`, the only place that looks at a model's
class. The interface a family implements is :class:`kn_lens.models.protocol.Family`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from kn_lens.errors import KnLensError
from kn_lens.models.backend import (
    HAS_HOOKED_CLASSES,
    TL_MAJOR,
    TL_VERSION,
    DecoderModel,
    EncoderModel,
    TransformerBridge,
    is_bridge,
)
from kn_lens.models.bridge.decoder import BridgeDecoderFamily
from kn_lens.models.bridge.encoder import BridgeEncoderFamily
from kn_lens.models.decoder.family import DecoderFamily
from kn_lens.models.encoder.family import EncoderFamily
from kn_lens.models.protocol import BagCheck, Batch, Family

if TYPE_CHECKING or HAS_HOOKED_CLASSES:
    from transformer_lens import HookedEncoder, HookedTransformer

__all__ = [
    "BRIDGE_DECODERS",
    "BRIDGE_ENCODERS",
    "BagCheck",
    "Batch",
    "Family",
    "Model",
    "check_editable",
    "decoder_family",
    "family_of",
    "is_bridge",
]

#: A model of either family, on either backend.
Model: TypeAlias = EncoderModel | DecoderModel

#: The Hugging Face classes kn_lens runs on a ``TransformerBridge``, by family.
BRIDGE_ENCODERS = ("BertForMaskedLM",)
BRIDGE_DECODERS = ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM")

_ENCODER = EncoderFamily()
_DECODER = DecoderFamily()
_BRIDGE_ENCODER = BridgeEncoderFamily()
_BRIDGE_DECODER = BridgeDecoderFamily()


def _bridge_family(model: TransformerBridge) -> Family[Any, Any]:
    arch = type(model.original_model).__name__
    # Measured: a BERT bridge in compatibility mode (with or without weight processing)
    # attributes ~100% off, since its hooks follow HookedEncoder's layout and the replay of
    # Hugging Face's BertOutput no longer meets them; TransformerLens 3.9's decoder bridges in
    # compatibility mode give NaN scores. 4.x decoders agree within 2e-6: accepted.
    wrong_scores = arch in BRIDGE_ENCODERS or (arch in BRIDGE_DECODERS and TL_MAJOR < 4)
    if wrong_scores and getattr(model, "compatibility_mode", False):
        raise KnLensError(
            f"a TransformerBridge around {arch} in compatibility mode is not supported on "
            f"TransformerLens {TL_VERSION}: boot it without enable_compatibility_mode(), or "
            "load it with kn_lens.load_model(..., backend='bridge')"
        )
    if arch in BRIDGE_ENCODERS:
        return _BRIDGE_ENCODER
    if arch in BRIDGE_DECODERS:
        return _BRIDGE_DECODER
    raise KnLensError(
        f"a TransformerBridge around {arch} is not supported: kn_lens runs "
        f"{', '.join(BRIDGE_ENCODERS + BRIDGE_DECODERS)} on the bridge"
    )


def decoder_family() -> Family[Any, Any]:
    """The decoder family, for what it decides from text alone (``usable_bags``)."""
    return _DECODER


def family_of(model: Any) -> Family[Any, Any]:
    """The family of ``model``: :class:`~kn_lens.models.encoder.EncoderFamily` for a
    ``HookedEncoder``, :class:`~kn_lens.models.decoder.DecoderFamily` for a
    ``HookedTransformer``, their bridge versions for a ``TransformerBridge`` around a BERT masked
    LM or a GPT-2 / GPT-NeoX / Llama causal LM; a :class:`KnLensError` for anything else."""
    if is_bridge(model):
        return _bridge_family(model)
    if HAS_HOOKED_CLASSES:
        if isinstance(model, HookedTransformer):
            return _DECODER
        if isinstance(model, HookedEncoder):
            return _ENCODER
    raise KnLensError(
        f"expected a HookedEncoder, HookedTransformer or TransformerBridge (kn_lens.load_model), "
        f"not {type(model).__name__}"
    )


def check_editable(model: Any) -> None:
    """A :class:`KnLensError` when ``W_out`` rows of ``model`` are not its raw weights: a
    ``TransformerBridge`` whose weights TransformerLens processed (``enable_compatibility_mode()``
    folds layer norms and centres ``W_out``), where an edit would not be the edit kn_lens means."""
    if is_bridge(model) and bool(getattr(model, "_weights_processed", False)):
        raise KnLensError(
            "this TransformerBridge has processed weights (enable_compatibility_mode() folds "
            "layer norms and centres W_out), so W_out rows are not the model's own: boot it "
            "without compatibility mode, or call enable_compatibility_mode(no_processing=True), "
            "or load it with kn_lens.load_model(..., backend='bridge')"
        )
