"""The default model's vocabulary: a canonical cased WordPiece vocabulary of the fact world.

The ``tokenizers`` WordPiece trainer breaks ties between equally frequent merges arbitrarily, so
the same corpus can give different vocabularies; :func:`build_tokenizer` makes the vocabulary
canonical, so that a rebuild of the default model is bit for bit the same.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from kn_lens.data.world import World, greedy_wordpiece, training_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer(world: World, out_dir: str | Path, *, vocab_size: int = 4000) -> Any:
    """Train a cased WordPiece vocabulary on the world's text and save it to ``out_dir``.

    The vocabulary is trained (``tokenizers.WordPieceTrainer``) on the training text with the
    invented subject names taken out; the name pieces (``Zor``, ``##vik``, ...) are then added as
    the world's morphology, so every subject splits into its 2-3 pieces. Only the trainer's
    deterministic output is kept (alphabet and whole words, in a canonical order), so the same
    world always gives the same ``vocab.txt``. Every object must come out as a single token and
    every subject as its pieces (``ValueError`` naming it otherwise).

    Returns:
        A ``transformers.BertTokenizer`` read back from ``out_dir`` (``vocab.txt`` and
        ``tokenizer_config.json``, ``do_lower_case=False``).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = set(world.subject_pieces)
    word = re.compile(r"[A-Z][a-z]+")
    texts = [
        word.sub(lambda m: "" if m.group() in subjects else m.group(), s)
        for s in training_text(world)
    ]
    texts.extend(world.objects)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # The trainer breaks ties between equally frequent merges arbitrarily, so its intermediate
    # pieces (e.g. "##dney" vs "##dne") differ from run to run. Keep only its deterministic part,
    # in a canonical order: special tokens, the alphabet (as word starts and as "##" pieces),
    # every word of the text whole (most frequent first), then the name pieces.
    trained = tok.get_vocab()
    split = tok.pre_tokenizer.pre_tokenize_str
    counts: Counter[str] = Counter(
        w for t in texts for w, _ in split(tok.normalizer.normalize_str(t))
    )
    missing = [w for w in counts if w not in trained]
    if missing:
        raise ValueError(
            f"vocab_size {vocab_size} too small: words not learnt whole, e.g. {missing[:5]}"
        )
    chars = sorted(w for w in trained if len(w) == 1 and w not in SPECIAL_TOKENS)
    cont = sorted(w for w in trained if w.startswith("##") and len(w) == 3)
    text_words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    words = [*SPECIAL_TOKENS, *chars, *cont, *text_words]
    have = set(words)
    heads = sorted({p[0] for p in world.subject_pieces.values()})
    tails = sorted({x for p in world.subject_pieces.values() for x in p[1:]})
    for p in [*heads, *tails, *world.objects]:
        if p not in have:
            words.append(p)
            have.add(p)
    for s, pieces in world.subject_pieces.items():
        got = greedy_wordpiece(s, have)
        if got != list(pieces):
            raise ValueError(
                f"subject {s!r} would split into {got}, not {list(pieces)}: a word "
                "of the text captures its pieces"
            )
    (out_dir / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": False,
                "strip_accents": False,
                "tokenize_chinese_chars": True,
                "model_max_length": 128,
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            },
            indent=2,
        )
        + "\n"
    )
    bert_tok = BertTokenizer.from_pretrained(str(out_dir))
    check_vocabulary(world, bert_tok)
    return bert_tok


def check_vocabulary(world: World, tokenizer: Any) -> None:
    """``ValueError`` naming the first object that is not one token, or subject not 2-3 pieces."""
    for o in world.objects:
        ids = tokenizer(o, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"object {o!r} is not a single token: {tokenizer.convert_ids_to_tokens(ids)}"
            )
    for s in world.subject_pieces:
        pieces = tokenizer.tokenize(s)
        if not 2 <= len(pieces) <= 3 or tokenizer.unk_token in pieces:
            raise ValueError(f"subject {s!r} splits into {pieces}, not 2-3 known pieces")


# --------------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------------
