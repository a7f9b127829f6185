"""Shared fixtures: tiny random BERT masked LMs saved as Hugging Face checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_WORDS = [
    "the",
    "a",
    "of",
    "in",
    "is",
    "was",
    "born",
    "city",
    "capital",
    "country",
    "language",
    "speaks",
    "works",
    "as",
    "located",
    "Paris",
    "London",
    "Berlin",
    "Rome",
    "Madrid",
    "French",
    "English",
    "German",
    "Italian",
    "doctor",
    "lawyer",
    "actor",
    "Alice",
    "Bob",
    ".",
    ",",
    "##a",
    "##o",
    "##x",
    "##en",
    "Zor",
    "Kal",
    "Mur",
    "##vik",
    "##dal",
    "to",
    "from",
    "and",
]


def make_tiny_checkpoint(
    folder: Path,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    d_mlp: int = 64,
    n_heads: int = 4,
    seed: int = 0,
    pretraining: bool = False,
) -> Path:
    """Save a random ``BertForMaskedLM`` (or ``BertForPreTraining``) with a small vocab to
    ``folder``."""
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    cls = BertForPreTraining if pretraining else BertForMaskedLM
    model = cls(cfg).eval()
    # Random init gives near-uniform softmax; sharpen the output so gradients are informative.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() == 2 else None
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(str(folder), do_lower_case=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random BertForMaskedLM checkpoint (2 layers, d_model 32, d_mlp 64)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt: Path):
    """The tiny checkpoint loaded as a HookedEncoder on CPU (float32)."""
    from kn_lens import load_model

    return load_model(tiny_ckpt, device="cpu")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; skips the test with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (tests with real data skipped)")
    return SHARED_DATA


warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")


@pytest.fixture(autouse=True, scope="session")
def _hash_cache(tmp_path_factory: pytest.TempPathFactory):
    """The model files' hash cache of the tests (kn_lens.file_hash) in a temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KN_LENS_CACHE", str(tmp_path_factory.mktemp("kn_lens_cache")))
    yield
    mp.undo()
