"""The encoder family: BERT masked LMs as ``HookedEncoder``.

- :mod:`kn_lens.prompts`: masked prompts as right-padded model input (the encoder's batching);
- :mod:`.forward`: the clean pass and the forward resumed from a layer, for attribution;
- :mod:`.family`: :class:`EncoderFamily`, the plug-in the rest of kn_lens sees.
"""

from kn_lens.models.encoder.family import EncoderFamily

__all__ = ["EncoderFamily"]
