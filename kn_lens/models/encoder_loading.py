"""Loading any BERT masked LM as a TransformerLens :class:`~transformer_lens.HookedEncoder`.

:func:`load_model` accepts

- ``"default"`` -- the small BERT trained on kn_lens' built-in fact world (shipped in the package);
- a model name TransformerLens knows (``"bert-base-cased"``, the paper's model), loaded through
  ``HookedEncoder.from_pretrained``;
- a local folder holding a Hugging Face ``BertForMaskedLM`` or ``BertForPreTraining`` checkpoint
  (``config.json``, ``*.safetensors`` or ``pytorch_model*.bin``, ``vocab.txt``). The weights are
  converted here, so a masked-LM checkpoint without a pooler or NSP head loads too.

The returned model has its tokenizer attached (``model.tokenizer``) and is in eval mode.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kn_lens.errors import KnLensError
from kn_lens.models.backend import official_model_name

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"
_ACT_FNS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "silu": "silu",
    "gelu_fast": "gelu_fast",
}


class ModelLoadError(KnLensError):
    """A model could not be loaded; the message says why and what to do instead."""


@contextmanager
def quiet_transformer_lens() -> Iterator[None]:
    """Silence TransformerLens 3.x's HookedEncoder DeprecationWarnings (and its FutureWarnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def available_devices() -> list[str]:
    """The devices torch can use on this machine: ``cpu``, then each CUDA GPU, then ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(
    device: str | torch.device | None, error: type[ModelLoadError] = ModelLoadError
) -> str:
    """``device`` checked against this machine (default: CUDA when available, else the CPU).

    Raises ``error`` (a :class:`ModelLoadError`), naming the device and the devices available,
    for a string torch does not know (``"gpu"``) and for a device this machine lacks (``"cuda"``
    without a CUDA GPU or a CUDA build of torch, ``"cuda:3"`` with two GPUs, ``"mps"`` off a Mac).
    """
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    avail = ", ".join(available_devices())
    use = "pass one of them: device='cpu' in Python, --device cpu on the command line"
    try:
        dev = device if isinstance(device, torch.device) else torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise error(
            f"unknown device {text!r}: expected cpu, cuda, cuda:N or mps (available on this "
            f"machine: {avail}); {use}"
        ) from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"torch {torch.__version__} is a CPU-only build"
                if torch.version.cuda is None
                else "torch finds no CUDA GPU"
            )
            raise error(
                f"device {text!r}: this machine has no CUDA device ({why}); available: {avail}; "
                f"{use}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise error(
                f"device {text!r}: there is no CUDA GPU {dev.index} (available: {avail}); {use}"
            )
        return text
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return text
    raise error(f"device {text!r} is not available on this machine (available: {avail}); {use}")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, ``HF_HOME``/hub, or the default)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of hub repository ``repo_id`` is in the local Hugging Face cache.
    Reads the cache folder only: never the network, so it answers at once offline."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    except Exception:  # noqa: BLE001 - a malformed repo id, an unreadable cache: not cached
        return False
    return isinstance(hit, str)


#: How to name a local checkpoint folder, in the Python API and on the command line at once.
LOCAL_FOLDER_HINT = (
    "pass a local folder: load_model('/path/to/folder') in Python, --model DIR on the command line"
)


def not_cached_error(
    name: str, official: str, error: type[ModelLoadError] = ModelLoadError
) -> ModelLoadError:
    """The error for a hub model name whose checkpoint is not in the local cache: kn_lens never
    downloads, so it fails at once instead of waiting on hub retries."""
    return error(
        f"model {name!r} ({official} on the Hugging Face hub) is not in the local Hugging Face "
        f"cache ({hub_cache_dir()}), and kn_lens downloads nothing. Download it where there is "
        f"network (`hf download {official}`, then it is found in the cache) or save the "
        f"checkpoint to a folder and {LOCAL_FOLDER_HINT}"
    )


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face checkpoint folder (safetensors preferred, else ``.bin``)."""
    folder = Path(folder)
    st_files = sorted(folder.glob("*.safetensors"))
    bin_files = sorted(folder.glob("pytorch_model*.bin"))
    sd: dict[str, torch.Tensor] = {}
    if st_files:
        from safetensors.torch import load_file

        for f in st_files:
            try:
                sd.update(load_file(str(f), device="cpu"))
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise ModelLoadError(
                    f"{f}: cannot read the weights, corrupt or truncated? ({e})"
                ) from None
    elif bin_files:
        for f in bin_files:
            try:
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
            except Exception as e:  # noqa: BLE001 - pickle and zip errors of many kinds
                raise ModelLoadError(
                    f"{f}: cannot read the weights, corrupt or truncated? ({e})"
                ) from None
    else:
        raise ModelLoadError(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}")
    return sd


def hooked_config_from_hf(
    hf_config: dict[str, Any], *, device: str, dtype: torch.dtype, name: str
) -> Any:
    """A TransformerLens ``HookedTransformerConfig`` for a Hugging Face BERT ``config.json``."""
    from transformer_lens import HookedTransformerConfig

    if hf_config.get("model_type", "bert") != "bert":
        raise ModelLoadError(f"{name}: model_type {hf_config.get('model_type')!r} is not 'bert'")
    act = hf_config.get("hidden_act", "gelu")
    if act not in _ACT_FNS:
        raise ModelLoadError(f"{name}: unsupported hidden_act {act!r}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{name}: only absolute position embeddings are supported")
    d_model, n_heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    return HookedTransformerConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=int(hf_config["intermediate_size"]),
        n_layers=int(hf_config["num_hidden_layers"]),
        n_ctx=int(hf_config["max_position_embeddings"]),
        eps=float(hf_config.get("layer_norm_eps", 1e-12)),
        d_vocab=int(hf_config["vocab_size"]),
        act_fn=_ACT_FNS[act],
        attention_dir="bidirectional",
        original_architecture="BertForMaskedLM",
        model_name=name,
        device=device,
        dtype=dtype,
        n_devices=1,
    )


def hooked_state_dict_from_hf(
    sd: dict[str, torch.Tensor], cfg: Any, name: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a Hugging Face BERT state dict onto HookedEncoder parameter names.

    Works for ``BertForMaskedLM`` and ``BertForPreTraining`` (with or without ``bert.`` prefix).
    The decoder weight falls back to the tied word embeddings; a missing pooler or NSP head is
    filled with zeros (neither is used for masked-LM prediction).
    """
    prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""

    def get(key: str) -> torch.Tensor:
        for k in (prefix + key, key):
            if k in sd:
                return sd[k]
        raise ModelLoadError(f"{name}: weight {key!r} missing from the checkpoint")

    def opt(*keys: str) -> torch.Tensor | None:
        return next((sd[k] for k in keys if k in sd), None)

    H, D, M = cfg.n_heads, cfg.d_head, cfg.d_model
    out: dict[str, torch.Tensor] = {
        "embed.embed.W_E": get("embeddings.word_embeddings.weight"),
        "embed.pos_embed.W_pos": get("embeddings.position_embeddings.weight"),
        "embed.token_type_embed.W_token_type": get("embeddings.token_type_embeddings.weight"),
        "embed.ln.w": get("embeddings.LayerNorm.weight"),
        "embed.ln.b": get("embeddings.LayerNorm.bias"),
    }
    for layer in range(cfg.n_layers):
        src, dst = f"encoder.layer.{layer}.", f"blocks.{layer}."
        for hf, tl in (("query", "Q"), ("key", "K"), ("value", "V")):
            w = get(f"{src}attention.self.{hf}.weight")  # [H*D, M] (out, in)
            out[f"{dst}attn.W_{tl}"] = w.reshape(H, D, M).transpose(1, 2)  # [H, M, D]
            out[f"{dst}attn.b_{tl}"] = get(f"{src}attention.self.{hf}.bias").reshape(H, D)
        w_o = get(f"{src}attention.output.dense.weight")  # [M, H*D]
        out[f"{dst}attn.W_O"] = w_o.T.reshape(H, D, M)
        out[f"{dst}attn.b_O"] = get(f"{src}attention.output.dense.bias")
        out[f"{dst}ln1.w"] = get(f"{src}attention.output.LayerNorm.weight")
        out[f"{dst}ln1.b"] = get(f"{src}attention.output.LayerNorm.bias")
        out[f"{dst}mlp.W_in"] = get(f"{src}intermediate.dense.weight").T
        out[f"{dst}mlp.b_in"] = get(f"{src}intermediate.dense.bias")
        out[f"{dst}mlp.W_out"] = get(f"{src}output.dense.weight").T
        out[f"{dst}mlp.b_out"] = get(f"{src}output.dense.bias")
        out[f"{dst}ln2.w"] = get(f"{src}output.LayerNorm.weight")
        out[f"{dst}ln2.b"] = get(f"{src}output.LayerNorm.bias")
    head = "cls.predictions."
    if head + "transform.dense.weight" not in sd:
        raise ModelLoadError(
            f"{name}: no masked-LM head (cls.predictions.*) in the checkpoint; "
            "a BertForMaskedLM or BertForPreTraining checkpoint is needed"
        )
    out["mlm_head.W"] = sd[head + "transform.dense.weight"].T
    out["mlm_head.b"] = sd[head + "transform.dense.bias"]
    out["mlm_head.ln.w"] = sd[head + "transform.LayerNorm.weight"]
    out["mlm_head.ln.b"] = sd[head + "transform.LayerNorm.bias"]
    decoder = opt(head + "decoder.weight")
    out["unembed.W_U"] = (decoder if decoder is not None else out["embed.embed.W_E"]).T
    bias = opt(head + "bias", head + "decoder.bias")
    out["unembed.b_U"] = bias if bias is not None else torch.zeros(cfg.d_vocab)
    pooler_w, pooler_b = opt(prefix + "pooler.dense.weight"), opt(prefix + "pooler.dense.bias")
    out["pooler.W"] = pooler_w.T if pooler_w is not None else torch.zeros(M, M)
    out["pooler.b"] = pooler_b if pooler_b is not None else torch.zeros(M)
    nsp_w, nsp_b = opt("cls.seq_relationship.weight"), opt("cls.seq_relationship.bias")
    out["nsp_head.W"] = nsp_w.T if nsp_w is not None else torch.zeros(M, 2)
    out["nsp_head.b"] = nsp_b if nsp_b is not None else torch.zeros(2)
    return {k: v.contiguous() for k, v in out.items()}


def load_tokenizer(folder: str | Path) -> Any:
    """A BERT WordPiece tokenizer from a folder with ``vocab.txt`` (and tokenizer config)."""
    from transformers import BertTokenizer

    folder = Path(folder)
    if not (folder / "vocab.txt").is_file():
        raise ModelLoadError(f"no vocab.txt in {folder}; pass tokenizer=... to load_model")
    # transformers 5: BertTokenizer(vocab_file=...) silently ignores the vocab; from_pretrained
    # on the folder reads it.
    return BertTokenizer.from_pretrained(str(folder))


def _load_folder(folder: Path, tokenizer: Any, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens import HookedEncoder

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; is it a Hugging Face checkpoint folder?"
        )
    try:
        hf_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object")
    cfg = hooked_config_from_hf(hf_config, device=device, dtype=dtype, name=str(folder))
    sd = hooked_state_dict_from_hf(read_hf_state_dict(folder), cfg, name=str(folder))
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer or folder)
    with quiet_transformer_lens():
        model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(
        {k: v.to(dtype) for k, v in sd.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith((".attn.mask", ".attn.IGNORE"))]  # buffers
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to ..."
        return model.to(device)


def _load_named(name: str, tokenizer: Any, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens import HookedEncoder

    try:
        official = official_model_name(name)
    except KnLensError:
        raise ModelLoadError(
            f"unknown model {name!r}: it is neither 'default', a local checkpoint folder, nor a "
            "model name TransformerLens knows (e.g. 'bert-base-cased')"
        ) from None
    if "bert" not in official.lower():
        raise ModelLoadError(f"{name!r} ({official}) is not a BERT model")
    if not is_cached(official):  # fail at once, not after a minute of hub retries
        raise not_cached_error(name, official)
    try:
        with quiet_transformer_lens():
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(official, local_files_only=True)
            model = HookedEncoder.from_pretrained(
                name, device=device, dtype=dtype, tokenizer=tokenizer, local_files_only=True
            )
    except Exception as e:  # an incomplete cache entry, a gated model, ...
        raise ModelLoadError(
            f"could not load {name!r} ({official}) from the local Hugging Face cache "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]}). Download it again "
            f"(`hf download {official}`) or {LOCAL_FOLDER_HINT}"
        ) from None
    return model


def load_encoder(
    name_or_path: str | Path = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer: Any = None,
) -> Any:
    """Load a BERT masked LM as a TransformerLens ``HookedEncoder``, tokenizer attached.

    Args:
        name_or_path: ``"default"`` (the built-in fact model), a TransformerLens model name such as
            ``"bert-base-cased"`` whose checkpoint is in the local Hugging Face cache, or a local
            Hugging Face checkpoint folder.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: parameter dtype.
        tokenizer: a tokenizer object, or a folder holding ``vocab.txt``, for checkpoints that keep
            their vocabulary elsewhere; default: the checkpoint folder's own.

    Raises:
        ModelLoadError: unknown name, missing files, a named model that is not in the local
            Hugging Face cache (nothing is downloaded: it fails at once), or a device this
            machine lacks; the message says what to pass instead.
    """
    dev = resolve_device(device)
    if str(name_or_path) == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the built-in default model is missing from {DEFAULT_MODEL_DIR}; rebuild it with "
                "`python -m kn_lens.training train --out kn_lens/default_model`"
            )
        model = _load_folder(DEFAULT_MODEL_DIR, tokenizer, dev, dtype)
    elif Path(name_or_path).expanduser().is_dir():
        model = _load_folder(Path(name_or_path).expanduser(), tokenizer, dev, dtype)
    else:
        model = _load_named(str(name_or_path), tokenizer, dev, dtype)
    model.eval()
    return model
