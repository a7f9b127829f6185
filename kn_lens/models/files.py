"""The files a model is computed from, and one content hash of them (what run folders fingerprint).

:func:`model_files` finds, for any name :func:`kn_lens.models.load_model` takes, the files its
weights, configuration and tokenizer are read from:

- ``"default"``: the built-in model's folder (``kn_lens/default_model``);
- a Hugging Face folder: its weight files (``*.safetensors``, ``*.bin`` and their indexes),
  ``config.json`` and tokenizer files (``tokenizer*``, ``vocab*``, ``merges.txt``,
  ``special_tokens_map.json``, ``added_tokens.json``, ``*.model``); README files, training logs
  and other files are not part of the model;
- a ``.gguf`` file, or ``"smollm2-135m"`` (the installed package's GGUF): that one file, which
  holds the weights, the configuration and the tokenizer;
- a TransformerLens name cached from the hub: the cached snapshot folder, as a folder above.

:func:`model_digest` hashes their bytes (:func:`kn_lens.file_hash.files_digest`; cached, so a
large file is read once, then again only when it changes).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from kn_lens.file_hash import files_digest
from kn_lens.models.backend import official_model_name
from kn_lens.models.decoder_loading import SMOLLM2_NAME, find_smollm2_gguf
from kn_lens.models.encoder_loading import DEFAULT_MODEL_DIR, ModelLoadError, hub_cache_dir

#: The files of a checkpoint folder that the model is computed from.
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.gguf",
    "config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
)


def folder_model_files(folder: Path) -> dict[str, Path]:
    """``{file name: path}`` of the files in ``folder`` that :data:`MODEL_FILE_PATTERNS` match
    (links, as in the hub cache, are followed)."""
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in MODEL_FILE_PATTERNS)
    }


def _hub_snapshot(name: str) -> Path | None:
    """The cached snapshot folder of TransformerLens name ``name``, or None when not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        official = official_model_name(name)
        hit = try_to_load_from_cache(official, "config.json", cache_dir=hub_cache_dir())
    except Exception:  # noqa: BLE001 - an unknown name, an unreadable cache: not found
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def model_files(name_or_path: str | Path) -> dict[str, Path]:
    """``{name: path}`` of the files model ``name_or_path`` is computed from (see the module).

    Raises:
        ModelLoadError: none can be found (the message names the model).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text == "default":
        files = folder_model_files(DEFAULT_MODEL_DIR)
    elif text.lower() == SMOLLM2_NAME:
        gguf = find_smollm2_gguf()
        files = {gguf.name: gguf}
    elif path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = folder_model_files(path)
    else:
        snapshot = _hub_snapshot(text)
        files = folder_model_files(snapshot) if snapshot is not None else {}
    if not files:
        raise ModelLoadError(
            f"--model {text}: found no weight, config or tokenizer files to fingerprint the "
            "model by (a checkpoint folder, a .gguf file, or a name cached from the hub)"
        )
    return files


def model_digest(name_or_path: str | Path) -> str:
    """SHA-256 (hex) over the names and bytes of :func:`model_files`: equal digests, equal
    model files."""
    return files_digest(model_files(name_or_path))
