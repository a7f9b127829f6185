"""One builder for the word-level tokenizers of the tests' tiny decoders (whitespace split)."""

from __future__ import annotations

from pathlib import Path


def save_word_tokenizer(
    folder: Path,
    words: list[str],
    *,
    specials: tuple[str, ...] = ("<unk>",),
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    unk: str = "<unk>",
) -> dict[str, int]:
    """Save a word-level ``PreTrainedTokenizerFast`` to ``folder`` and return its vocabulary.

    Token ids follow ``specials`` then ``words``, in order, duplicates dropped. ``bos``, ``eos``,
    ``pad`` and ``unk`` name the special tokens; each must be in ``specials`` or ``words``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *words]))}
    named = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    missing = [t for t in named.values() if t is not None and t not in vocab]
    if missing:
        raise ValueError(f"special tokens {missing} are not in the vocabulary")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, **{k: v for k, v in named.items() if v is not None}
    ).save_pretrained(folder)
    return vocab
