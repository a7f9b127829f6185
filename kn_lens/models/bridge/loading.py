"""Loading a model as a TransformerLens ``TransformerBridge`` with raw weights.

The same sources as :func:`kn_lens.load_model` on the ``"hooked"`` backend: ``"default"``, a
Hugging Face BERT masked-LM folder, a decoder folder (GPT-2, GPT-NeoX/Pythia, Llama), a ``.gguf``
file, ``"smollm2-135m"``, or a Hugging Face model id in the local cache. kn_lens reads the Hugging
Face model itself (offline) and boots the bridge around it with
``TransformerBridge.boot_transformers(..., hf_model=...)``, without compatibility mode: the
weights stay the checkpoint's (edits write ``W_out`` rows), and logits and activations are the
Hugging Face model's.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from kn_lens.errors import KnLensError
from kn_lens.models.backend import TransformerBridge, official_model_name
from kn_lens.models.decoder_loading import DecoderLoadError, is_decoder_checkpoint, load_hf_decoder
from kn_lens.models.encoder_loading import (
    DEFAULT_MODEL_DIR,
    LOCAL_FOLDER_HINT,
    ModelLoadError,
    is_cached,
    load_tokenizer,
    not_cached_error,
    resolve_device,
)

__all__ = ["boot_bridge", "load_bridge"]


def boot_bridge(
    name: str, hf_model: Any, tokenizer: Any, device: str, dtype: torch.dtype
) -> TransformerBridge:
    """``TransformerBridge.boot_transformers`` around ``hf_model`` (raw weights, eval mode), in
    ``dtype`` (the bridge does not cast a model it is given)."""
    hf_model = hf_model.to(dtype)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    except Exception as e:  # an architecture TransformerLens cannot bridge, ...
        raise ModelLoadError(
            f"{name}: TransformerLens could not boot a TransformerBridge "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        ) from None
    return bridge.eval()


def _bert_folder(folder: Path, tokenizer: Any) -> tuple[Any, Any]:
    from transformers import BertForMaskedLM

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; is it a Hugging Face checkpoint folder?"
        )
    try:
        hf_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(hf_config, dict) or hf_config.get("model_type", "bert") != "bert":
        got = hf_config.get("model_type") if isinstance(hf_config, dict) else hf_config
        raise ModelLoadError(f"{cfg_path}: model_type {got!r} is not 'bert'")
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer or folder)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            hf = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # corrupt weights, a checkpoint without a masked-LM head, ...
        raise ModelLoadError(
            f"{folder}: cannot load a BertForMaskedLM ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]})"
        ) from None
    return hf, tokenizer


def _bert_named(name: str, tokenizer: Any) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BertForMaskedLM

    try:  # TransformerLens' short names ("bert-base-cased") live under the official repository
        official = official_model_name(name)
    except KnLensError:
        official = name
    if not is_cached(official):
        raise not_cached_error(name, official)
    try:
        hf = BertForMaskedLM.from_pretrained(official, local_files_only=True)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(official, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"could not load {name!r} from the local Hugging Face cache ({type(e).__name__}); "
            f"{LOCAL_FOLDER_HINT}"
        ) from None
    return hf, tokenizer


def load_bridge(
    name_or_path: str | Path = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer: Any = None,
) -> TransformerBridge:
    """Load ``name_or_path`` (as :func:`kn_lens.load_model`) as a ``TransformerBridge`` with raw
    weights and its tokenizer, in eval mode.

    Raises:
        ModelLoadError: the model cannot be loaded (:class:`DecoderLoadError` for decoders).
    """
    dev = resolve_device(device)
    if is_decoder_checkpoint(name_or_path):
        if tokenizer is not None:
            raise ModelLoadError("tokenizer= is for encoder checkpoints; decoders bring their own")
        hf_model, tok, name = load_hf_decoder(name_or_path)
        try:
            return boot_bridge(name, hf_model, tok, dev, dtype)
        except ModelLoadError as e:
            raise DecoderLoadError(str(e)) from None
    text = str(name_or_path)
    if text == "default":
        folder: Path | None = DEFAULT_MODEL_DIR
    elif Path(text).expanduser().is_dir():
        folder = Path(text).expanduser()
    else:
        folder = None
    if folder is not None:
        hf, tok = _bert_folder(folder, tokenizer)
        name = str(folder)
    else:
        hf, tok = _bert_named(text, tokenizer)
        name = text
    return boot_bridge(name, hf, tok, dev, dtype)
