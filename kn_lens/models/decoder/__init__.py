"""The decoder family: causal LMs (GPT-2, GPT-NeoX/Pythia, Llama/SmolLM2) as ``HookedTransformer``.

- :mod:`.batch`: prompts (the text before the answer) and answers as left-padded model input;
- :mod:`.forward`: the clean pass and the forward resumed from a layer, for attribution;
- :mod:`.family`: :class:`DecoderFamily`, the plug-in the rest of kn_lens sees.
"""

from kn_lens.models.decoder.batch import EncodedDecoderPrompts, encode_decoder
from kn_lens.models.decoder.family import DecoderFamily, answer_logprob, next_token

__all__ = [
    "DecoderFamily",
    "EncodedDecoderPrompts",
    "answer_logprob",
    "encode_decoder",
    "next_token",
]
