"""The TransformerBridge backend (issue 23): versions and backends, equal numbers with the
TransformerLens 3.9 classes (where they exist), exactness against plain hooks (on any version),
W_out edits through the bridge, and a bridge with processed weights refused for edits."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

import kn_lens
from kn_lens.data import default_facts
from kn_lens.errors import KnLensError
from kn_lens.models.answer import answer_logprob_from_logits
from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_MAJOR, TL_VERSION, default_backend
from kn_lens.models.family import family_of
from kn_lens.neuron import Neuron, hook_name
from kn_lens.prompts import encode, encoder_output, logits_at_mask
from kn_lens.weights import zero_rows

from .conftest import make_decoder_checkpoint

needs_hooked = pytest.mark.skipif(
    not HAS_HOOKED_CLASSES,
    reason=f"TransformerLens {TL_VERSION} has no HookedEncoder / HookedTransformer to compare with",
)
DECODER_PROMPTS = ["the capital of France is", "the official language of Japan is", "Paris is the"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest reference magnitude."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def bridge():
    return kn_lens.load_model("default", device="cpu", backend="bridge")


@pytest.fixture(scope="module")
def fact():
    bag = default_facts()[0]
    return bag, list(bag.prompts), bag.fact.object


def test_version_and_default_backend():
    assert TL_VERSION == importlib.metadata.version("transformer-lens")
    assert TL_MAJOR in (3, 4)
    assert default_backend() == ("hooked" if TL_MAJOR < 4 else "bridge")
    model = kn_lens.load_model("default", device="cpu")
    assert (type(model).__name__ == "TransformerBridge") == (TL_MAJOR >= 4)


def test_backend_errors_name_the_value():
    with pytest.raises(KnLensError, match="unknown backend 'hf'"):
        kn_lens.load_model("default", device="cpu", backend="hf")
    if not HAS_HOOKED_CLASSES:
        with pytest.raises(KnLensError, match="backend 'hooked' needs TransformerLens 3"):
            kn_lens.load_model("default", device="cpu", backend="hooked")


def test_bridge_has_raw_weights(bridge):
    assert type(bridge).__name__ == "TransformerBridge"
    assert type(family_of(bridge)).__name__ == "BridgeEncoderFamily"
    hf_w = bridge.original_model.bert.encoder.layer[1].output.dense.weight  # [d_model, d_mlp]
    w_out = bridge.blocks[1].mlp.W_out
    assert tuple(w_out.shape) == (bridge.cfg.d_mlp, bridge.cfg.d_model)
    assert w_out.data_ptr() == hf_w.data_ptr()
    assert torch.equal(w_out, hf_w.T)


def naive_encoder_ig(model, prompt: str, target: str, layer: int, steps: int) -> torch.Tensor:
    """IG at [MASK] by plain hooks: one full forward and backward per step."""
    enc = encode(model, [prompt])
    tid = model.tokenizer.convert_tokens_to_ids(target)
    rows = torch.arange(1)
    acts = {}

    def keep(t, hook):
        acts["a"] = t[rows, enc.mask_pos].detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name(layer), keep)]):
        encoder_output(model, enc)
    a = acts["a"]
    total = torch.zeros_like(a)
    for k in range(steps):
        leaf = (k / steps * a).clone().requires_grad_(True)

        def put(t, hook, leaf=leaf):
            t = t.clone()
            t[rows, enc.mask_pos] = leaf
            return t

        with model.hooks(fwd_hooks=[(hook_name(layer), put)]):
            logits = logits_at_mask(model, encoder_output(model, enc), enc.mask_pos)
        (g,) = torch.autograd.grad(logits.softmax(-1)[0, tid], leaf)
        total += g
    return (a * total / steps)[0]


def naive_decoder_ig(model, prompt: str, answer: str, layer: int, steps: int) -> torch.Tensor:
    """IG at the last prompt position by plain hooks (teacher-forced answer probability)."""
    fam = family_of(model)
    enc = fam.attribution_batch(model, [prompt], [answer])
    read = enc.read_pos
    rows = torch.arange(1)
    a = kn_lens.attribute(model, [prompt], answer, method="activation", layers=[layer])[0, 0]
    total = torch.zeros_like(a)
    for k in range(steps):
        leaf = (k / steps * a)[None].clone().requires_grad_(True)

        def put(t, hook, leaf=leaf):
            t = t.clone()
            t[rows, read] = leaf
            return t

        with model.hooks(fwd_hooks=[(hook_name(layer), put)]):
            logits = model(enc.tokens, attention_mask=enc.attention_mask)
        seg = logits[:, enc.prompt_width - 1 :]
        p = answer_logprob_from_logits(seg, enc.answer_ids, enc.answer_mask).exp()
        (g,) = torch.autograd.grad(p.sum(), leaf)
        total += g[0]
    return a * total / steps


def test_encoder_ig_equals_plain_hooks(bridge, fact):
    """On any TransformerLens version: the engine on the bridge equals IG by plain hooks."""
    _, prompts, target = fact
    ours = kn_lens.attribute(bridge, prompts[:2], target, steps=4)
    for p in range(2):
        for layer in range(bridge.cfg.n_layers):
            ref = naive_encoder_ig(bridge, prompts[p], target, layer, steps=4)
            assert rel(ours[p, layer], ref) < 1e-4, (p, layer)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_decoder_ig_equals_plain_hooks(kind: str, tmp_path: Path):
    folder = make_decoder_checkpoint(tmp_path / kind, kind)
    model = kn_lens.load_model(folder, device="cpu", backend="bridge")
    assert type(family_of(model)).__name__ == "BridgeDecoderFamily"
    ours = kn_lens.attribute(model, DECODER_PROMPTS, "Paris city", steps=4)
    for p, prompt in enumerate(DECODER_PROMPTS):
        for layer in range(model.cfg.n_layers):
            ref = naive_decoder_ig(model, prompt, "Paris city", layer, steps=4)
            assert rel(ours[p, layer], ref) < 1e-4, (kind, p, layer)


@needs_hooked
@pytest.mark.parametrize("method", ["ig", "grad_x_act", "activation"])
def test_default_model_equals_hooked(bridge, fact, method: str):
    bag, prompts, target = fact
    hooked = kn_lens.load_model("default", device="cpu", backend="hooked")
    ref = kn_lens.attribute(hooked, prompts, target, method=method)
    ours = kn_lens.attribute(bridge, prompts, target, method=method)
    assert rel(ours, ref) < 1e-4
    if method == "ig":
        assert kn_lens.find_knowledge_neurons(bridge, bag, scores=ours) == (
            kn_lens.find_knowledge_neurons(hooked, bag, scores=ref)
        )
    fam_h, fam_b = family_of(hooked), family_of(bridge)
    lh, ph = fam_h.readout(hooked, fam_h.encode(hooked, prompts, [target] * len(prompts)))
    lb, pb = fam_b.readout(bridge, fam_b.encode(bridge, prompts, [target] * len(prompts)))
    assert rel(lb, lh) < 1e-4
    assert ph is not None and pb is not None and rel(pb, ph) < 1e-4


@needs_hooked
@pytest.mark.parametrize("method", ["ig", "grad_x_act", "activation"])
def test_decoders_equal_hooked(decoder_ckpt, method: str):
    kind, folder = decoder_ckpt
    hooked = kn_lens.load_model(folder, device="cpu", backend="hooked")
    bridge = kn_lens.load_model(folder, device="cpu", backend="bridge")
    ref = kn_lens.attribute(hooked, DECODER_PROMPTS, "Paris city", method=method, contrast="Tokyo")
    ours = kn_lens.attribute(bridge, DECODER_PROMPTS, "Paris city", method=method, contrast="Tokyo")
    assert rel(ours, ref) < 1e-4, kind
    fam_h, fam_b = family_of(hooked), family_of(bridge)
    enc_h = fam_h.encode(hooked, DECODER_PROMPTS, ["Paris city"] * 3)
    enc_b = fam_b.encode(bridge, DECODER_PROMPTS, ["Paris city"] * 3)
    assert torch.equal(enc_h.tokens, enc_b.tokens)
    (lh, ph), (lb, pb) = fam_h.readout(hooked, enc_h), fam_b.readout(bridge, enc_b)
    assert rel(lb, lh) < 1e-4 and rel(pb, ph) < 1e-4


def test_row_edit_through_the_bridge(bridge, fact):
    _, prompts, target = fact
    fam = family_of(bridge)
    enc = fam.encode(bridge, prompts, [target] * len(prompts))
    before, _ = fam.readout(bridge, enc)
    hf_w = bridge.original_model.bert.encoder.layer[2].output.dense.weight
    saved = hf_w.detach().clone()
    neurons = [Neuron(2, i) for i in range(0, 1024, 4)]
    with zero_rows(bridge, neurons):
        assert torch.all(hf_w[:, 0] == 0)  # W_out row 0 is column 0 of the HF weight
        during, _ = fam.readout(bridge, enc)
    after, _ = fam.readout(bridge, enc)
    assert not torch.allclose(during, before)
    assert torch.equal(hf_w, saved) and torch.equal(after, before)


def test_processed_weights_refused_for_edits(tmp_path: Path):
    folder = make_decoder_checkpoint(tmp_path / "gpt2", "gpt2")
    model = kn_lens.load_model(folder, device="cpu", backend="bridge")
    zero_rows(model, [Neuron(0, 1)]).restore()  # raw weights: fine
    model.enable_compatibility_mode()  # processes the weights (folds norms, centres W_out)
    with pytest.raises(KnLensError, match="processed weights"):
        zero_rows(model, [Neuron(0, 1)])


def test_a_bridge_in_compatibility_mode_is_refused_where_it_would_give_wrong_scores(
    fact, tmp_path: Path
):
    """A BERT bridge in compatibility mode (even without weight processing) is refused with what
    to do, and so is a decoder bridge on TransformerLens 3.x (its scores came out NaN); on 4.x a
    decoder bridge in compatibility mode attributes as the raw one does."""
    bag, prompts, target = fact
    enc = kn_lens.load_model("default", device="cpu", backend="bridge")
    enc.enable_compatibility_mode(no_processing=True)
    with pytest.raises(KnLensError, match="compatibility mode is not supported"):
        kn_lens.attribute(enc, prompts[:1], target, steps=2)
    folder = make_decoder_checkpoint(tmp_path / "gpt2", "gpt2")
    raw = kn_lens.load_model(folder, device="cpu", backend="bridge")
    compat = kn_lens.load_model(folder, device="cpu", backend="bridge")
    compat.enable_compatibility_mode()
    if TL_MAJOR < 4:
        with pytest.raises(KnLensError, match="compatibility mode is not supported"):
            kn_lens.attribute(compat, DECODER_PROMPTS, "Paris city", steps=4)
        return
    ref = kn_lens.attribute(raw, DECODER_PROMPTS, "Paris city", steps=4)
    assert rel(kn_lens.attribute(compat, DECODER_PROMPTS, "Paris city", steps=4), ref) < 1e-4


def test_user_booted_bridge(fact):
    """A bridge the user booted (hf_model=) works like one kn_lens loaded."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import BertForMaskedLM, BertTokenizer

    from kn_lens.models import DEFAULT_MODEL_DIR

    hf = BertForMaskedLM.from_pretrained(str(DEFAULT_MODEL_DIR))
    tok = BertTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    user = TransformerBridge.boot_transformers(
        str(DEFAULT_MODEL_DIR), hf_model=hf, tokenizer=tok, device="cpu"
    )
    _, prompts, target = fact
    ours = kn_lens.attribute(user, prompts[:1], target, method="grad_x_act")
    ref = kn_lens.attribute(
        kn_lens.load_model("default", device="cpu", backend="bridge"),
        prompts[:1],
        target,
        method="grad_x_act",
    )
    assert rel(ours, ref) < 1e-6
