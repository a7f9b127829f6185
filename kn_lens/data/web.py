"""Web sentences as masked prompts: the paper's T1, T2 and T3 prompt types.

The paper checks whether knowledge neurons fire on open-domain text. For each fact it has web
sentences in the *distant-supervision format* (the Bing data published with the paper): a JSON list
per relation, one object per fact in that relation's T-REx order, with

- ``th_bags``: sentences that mention the head (subject) and the tail (object);
- ``h_bags``: sentences that mention only the head;

and ``query_pairs.json``: ``{relation: [[head, tail], ...]}`` in the same order. From these we build

- **T1** -- a head-and-tail sentence with the first whole-word occurrence of the tail replaced by
  ``[MASK]``. Occurrences of the head are protected: a tail inside the head's name is never masked.
- **T2** -- a head-only sentence with one random word among its first ``t2_first_words`` (50)
  replaced by ``[MASK]``, never a word of the head.
- **T3** -- as many random sentences from the whole pool (every ``th``/``h`` sentence of every
  loaded fact) as the fact has T1 prompts, each with one random word among its first 50 masked.

A *word* is a whitespace-separated token holding at least one letter or digit; only its core (first
to last letter/digit) is replaced, so ``"Victoria),"`` becomes ``"[MASK]),"``. Sentences that
cannot be masked are skipped and counted with a reason (:data:`SKIP_REASONS`), never silently
dropped. Randomness comes from one :class:`random.Random` per fact, seeded by ``(seed, fact key)``,
so a fact's prompts do not depend on which other facts are built with it.

Long sentences are not cut here: the encoder family's ``encode(..., max_tokens=)``
(:class:`kn_lens.models.encoder.EncoderFamily`) truncates to ``min(max_tokens, n_ctx)`` tokens with
a window that always keeps the ``[MASK]``.

The default model's world generates web-like sentences in the same format
(:func:`kn_lens.data.world.default_web_bags`), so :func:`default_web_facts` runs the same code
offline.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kn_lens.data.facts import MASK, DataError, FactBag, MissingDataError, read_text
from kn_lens.data.world import default_query_pairs, default_web_bags
from kn_lens.errors import KnLensError

PromptType = Literal["T1", "T2", "T3"]
PROMPT_TYPES: tuple[str, ...] = ("T1", "T2", "T3")

#: Why a sentence could not become a prompt (the keys of :attr:`WebPromptSet.skipped`).
SKIP_REASONS: dict[str, str] = {
    "not_text": "the entry is not a non-empty string",
    "has_mask": f"the sentence already contains the text {MASK}",
    "tail_not_found": "no whole-word occurrence of the tail outside the head",
    "no_word": "no maskable word (outside the head) among the first words",
}


class MaskError(KnLensError):
    """A sentence cannot be masked; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, sentence: Any) -> None:
        self.reason = reason
        super().__init__(f"{SKIP_REASONS[reason]}: {str(sentence)[:120]!r}")


# ----------------------------------------------------------------------------------------------
# Masking one sentence
# ----------------------------------------------------------------------------------------------


def _check_sentence(sentence: Any) -> str:
    if not isinstance(sentence, str) or not sentence.strip():
        raise MaskError("not_text", sentence)
    if MASK in sentence:
        raise MaskError("has_mask", sentence)
    return sentence


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    """All (possibly overlapping) ``[start, end)`` spans of plain text ``needle`` in ``text``."""
    spans: list[tuple[int, int]] = []
    if not needle:
        return spans
    i = text.find(needle)
    while i != -1:
        spans.append((i, i + len(needle)))
        i = text.find(needle, i + 1)
    return spans


def _overlaps(span: tuple[int, int], others: Iterable[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in others)


def mask_tail(sentence: str, head: str, tail: str) -> str:
    """T1: replace the first whole-word occurrence of ``tail`` outside ``head`` by ``[MASK]``.

    Matching is plain, case-sensitive text (regex metacharacters in the tail are ordinary
    characters). *Whole word* means the characters just before and after the occurrence are not
    letters or digits. Occurrences that overlap an occurrence of ``head`` are never masked.

    Raises:
        MaskError: reason ``"not_text"``, ``"has_mask"`` or ``"tail_not_found"``.
    """
    _check_sentence(sentence)
    if not tail:
        raise DataError("the tail must be a non-empty string")
    heads = _occurrences(sentence, head)
    for s, e in _occurrences(sentence, tail):
        if s > 0 and sentence[s - 1].isalnum():
            continue
        if e < len(sentence) and sentence[e].isalnum():
            continue
        if _overlaps((s, e), heads):
            continue
        return sentence[:s] + MASK + sentence[e:]
    raise MaskError("tail_not_found", sentence)


def maskable_words(
    sentence: str, *, first_words: int = 50, protect: str | None = None
) -> list[tuple[int, int]]:
    """Character spans of the words of ``sentence`` that T2/T3 may mask.

    Words are the first ``first_words`` whitespace-separated tokens; each contributes the span of
    its core (first to last letter or digit), and tokens with no letter or digit are left out, as
    are words that overlap an occurrence of ``protect`` (the head).
    """
    heads = _occurrences(sentence, protect) if protect else []
    spans: list[tuple[int, int]] = []
    pos, n_words = 0, 0
    for token in sentence.split():
        start = sentence.index(token, pos)
        pos = start + len(token)
        n_words += 1
        if n_words > first_words:
            break
        alnum = [i for i, c in enumerate(token) if c.isalnum()]
        if not alnum:
            continue
        if heads and _overlaps((start, start + len(token)), heads):
            continue
        spans.append((start + alnum[0], start + alnum[-1] + 1))
    return spans


def mask_random_word(
    sentence: str, rng: random.Random, *, first_words: int = 50, protect: str | None = None
) -> str:
    """T2/T3: replace one random word among the first ``first_words`` by ``[MASK]``.

    ``protect`` (the head for T2) is never masked, nor is any word overlapping it.

    Raises:
        MaskError: reason ``"not_text"``, ``"has_mask"`` or ``"no_word"``.
    """
    _check_sentence(sentence)
    spans = maskable_words(sentence, first_words=first_words, protect=protect)
    if not spans:
        raise MaskError("no_word", sentence)
    s, e = spans[rng.randrange(len(spans))]
    return sentence[:s] + MASK + sentence[e:]


# ----------------------------------------------------------------------------------------------
# Facts with web sentences
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebFact:
    """One fact's web sentences.

    Attributes:
        relation: relation id, e.g. ``"P19"``.
        index: the fact's position within its relation (T-REx order), matching ``FactBag.index``.
        subject: the head, from ``query_pairs``.
        object: the tail, from ``query_pairs``.
        th_bags: sentences mentioning head and tail (T1 sources).
        h_bags: sentences mentioning only the head (T2 sources).
    """

    relation: str
    index: int
    subject: str
    object: str
    th_bags: tuple[Any, ...] = ()
    h_bags: tuple[Any, ...] = ()

    @property
    def key(self) -> str:
        """``"{relation}/{index}"``, the same key as the matching :class:`FactBag`."""
        return f"{self.relation}/{self.index}"


def web_facts_from_dict(
    web_bags: Mapping[str, Sequence[Mapping[str, Any]]],
    query_pairs: Mapping[str, Sequence[Sequence[str]]],
    *,
    relations: Sequence[str] | None = None,
) -> dict[str, list[WebFact]]:
    """Pair in-memory distant-supervision data with its query pairs, by order.

    Args:
        web_bags: ``{relation: [{"th_bags": [...], "h_bags": [...]}, ...]}``.
        query_pairs: ``{relation: [[head, tail], ...]}`` in the same order.
        relations: only these relations (default: all of ``web_bags``).

    Raises:
        DataError: naming the relation when it has no query pairs, when the two lists differ in
            length, or naming the entry when one is malformed.
    """
    rels = list(web_bags) if relations is None else list(relations)
    out: dict[str, list[WebFact]] = {}
    for rel in rels:
        if rel not in web_bags:
            raise DataError(f"relation {rel!r} has no web sentences; available: {sorted(web_bags)}")
        if rel not in query_pairs:
            raise DataError(f"relation {rel!r} has web sentences but no query pairs")
        bags, pairs = web_bags[rel], query_pairs[rel]
        if len(bags) != len(pairs):
            raise DataError(
                f"relation {rel!r}: {len(bags)} web bags but {len(pairs)} query "
                "pairs; they must be in the same order and of the same length"
            )
        facts = []
        for i, (bag, pair) in enumerate(zip(bags, pairs, strict=False)):
            if (
                not isinstance(bag, Mapping)
                or not isinstance(bag.get("th_bags", []), list)
                or not isinstance(bag.get("h_bags", []), list)
            ):
                raise DataError(f"{rel}/{i}: expected an object with list fields th_bags, h_bags")
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(x, str) and x for x in pair)
            ):
                raise DataError(f"{rel}/{i}: query pair must be [head, tail] strings, got {pair!r}")
            facts.append(
                WebFact(
                    rel,
                    i,
                    pair[0],
                    pair[1],
                    tuple(bag.get("th_bags", [])),
                    tuple(bag.get("h_bags", [])),
                )
            )
        out[rel] = facts
    return out


WEB_FILE_PREFIX, WEB_FILE_SUFFIX = "final_distant_allbags_", "_new.json"


def web_files(distant_dir: str | Path) -> dict[str, Path]:
    """The paper's per-relation web-sentence files in a folder, by relation id
    (``final_distant_allbags_{relation}_new.json``)."""
    return {
        p.name[len(WEB_FILE_PREFIX) : -len(WEB_FILE_SUFFIX)]: p
        for p in sorted(Path(distant_dir).glob(f"{WEB_FILE_PREFIX}*{WEB_FILE_SUFFIX}"))
    }


def _read_json(path: str | Path) -> Any:
    """One JSON document; :class:`DataError` names the file and line of bad UTF-8 or JSON (a BOM
    at the start is accepted)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def web_relations(distant_dir: str | Path) -> list[str]:
    """The relation ids that have a web-sentence file in ``distant_dir``, sorted."""
    return sorted(web_files(distant_dir))


def load_web_facts(
    distant_dir: str | Path,
    query_pairs_path: str | Path | None = None,
    *,
    relations: Sequence[str] | None = None,
) -> dict[str, list[WebFact]]:
    """Read the paper's distant-supervision files (``final_distant_allbags_{rel}_new.json``).

    Args:
        distant_dir: folder of the per-relation files.
        query_pairs_path: ``query_pairs.json`` (default: the one in ``distant_dir``).
        relations: only these relations (default: every relation with a file there). A relation
            without a file raises ``DataError`` naming it.

    Raises:
        DataError: bad UTF-8 or JSON (file and line), or a malformed entry (file and fact key).
    """
    distant_dir = Path(distant_dir)
    if not distant_dir.is_dir():
        raise MissingDataError(f"distant-supervision folder not found: {distant_dir}")
    qp_path = Path(query_pairs_path) if query_pairs_path else distant_dir / "query_pairs.json"
    if not qp_path.is_file():
        raise MissingDataError(f"query pairs file not found: {qp_path}")
    files = web_files(distant_dir)
    rels = sorted(files) if relations is None else list(relations)
    missing = [r for r in rels if r not in files]
    if missing:
        raise DataError(
            f"no web-sentence file for relation(s) {', '.join(missing)}; "
            f"available: {', '.join(sorted(files))}"
        )
    query_pairs = _read_json(qp_path)
    if not isinstance(query_pairs, dict):
        raise DataError(f"{qp_path}: expected a JSON object {{relation: [[head, tail], ...]}}")
    out: dict[str, list[WebFact]] = {}
    for rel in rels:
        data = _read_json(files[rel])
        if not isinstance(data, list):
            raise DataError(f"{files[rel]}: expected a JSON list of objects")
        try:
            out.update(web_facts_from_dict({rel: data}, query_pairs, relations=[rel]))
        except ValueError as e:  # entry i of the file is fact rel/i
            raise DataError(f"{files[rel]} (query pairs {qp_path}): {e}") from None
    return out


def default_web_facts() -> dict[str, list[WebFact]]:
    """The default world's web-like sentences (standing in for the Bing data), as WebFacts."""
    return web_facts_from_dict(default_web_bags(), default_query_pairs())


def match_bags(
    web_facts: Mapping[str, Sequence[WebFact]], bags: Sequence[FactBag]
) -> list[tuple[FactBag, WebFact]]:
    """Pair each bag with the web fact of the same relation and index.

    Bags whose relation has no web sentences are left out. A bag whose index is out of range, or
    whose subject/object disagree with the query pair at that index, raises ``DataError`` naming
    the bag -- the two sources are not in the same order.
    """
    pairs = []
    for bag in bags:
        facts = web_facts.get(bag.relation)
        if facts is None:
            continue
        if not 0 <= bag.index < len(facts):
            raise DataError(
                f"bag {bag.key} ({bag.subject!r}): index out of range of the "
                f"{len(facts)} web facts of {bag.relation}"
            )
        wf = facts[bag.index]
        if (wf.subject, wf.object) != (bag.subject, bag.object):
            raise DataError(
                f"bag {bag.key} is ({bag.subject!r}, {bag.object!r}) but the web fact "
                f"at that index is ({wf.subject!r}, {wf.object!r})"
            )
        pairs.append((bag, wf))
    return pairs


# ----------------------------------------------------------------------------------------------
# Building the three prompt types
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactPrompts:
    """The T1/T2/T3 prompts of one fact (each string holds exactly one ``[MASK]``).

    ``t3_sources`` gives, per T3 prompt, the key of the fact whose pool sentence it came from.
    """

    key: str
    relation: str
    subject: str
    object: str
    t1: tuple[str, ...]
    t2: tuple[str, ...]
    t3: tuple[str, ...]
    t3_sources: tuple[str, ...] = ()

    def of_type(self, kind: str) -> tuple[str, ...]:
        """The prompts of type ``"T1"``, ``"T2"`` or ``"T3"``."""
        if kind not in PROMPT_TYPES:
            raise DataError(f"unknown prompt type {kind!r}; expected one of {PROMPT_TYPES}")
        return {"T1": self.t1, "T2": self.t2, "T3": self.t3}[kind]


@dataclass(frozen=True)
class SkippedSentence:
    """A sentence that did not become a prompt: the fact, the prompt type, the reason, the text."""

    key: str
    kind: str
    reason: str
    sentence: str


@dataclass
class WebPromptSet:
    """Output of :func:`build_web_prompts`.

    Attributes:
        facts: per fact (in input order), its prompts.
        skipped: every sentence that could not be masked, with its reason.
        seed: the seed used.
    """

    facts: list[FactPrompts]
    skipped: list[SkippedSentence] = field(default_factory=list)
    seed: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"T1": {"built": n, "tail_not_found": m, ...}, "T2": ..., "T3": ...}``."""
        out: dict[str, dict[str, int]] = {}
        for kind in PROMPT_TYPES:
            c: Counter[str] = Counter()
            c["built"] = sum(len(fp.of_type(kind)) for fp in self.facts)
            c.update(s.reason for s in self.skipped if s.kind == kind)
            out[kind] = dict(c)
        return out

    def by_key(self) -> dict[str, FactPrompts]:
        return {fp.key: fp for fp in self.facts}

    def map_prompts(self, fn: Callable[[str], str | None], reason: str) -> WebPromptSet:
        """The same set with every prompt passed through ``fn`` (a model family's
        ``model_prompt``); prompts it maps to ``None`` are dropped and listed in ``skipped`` with
        ``reason``."""
        facts, skipped = [], list(self.skipped)
        for fp in self.facts:
            kept: dict[str, list[str]] = {}
            sources: list[str] = []
            for kind in PROMPT_TYPES:
                kept[kind] = []
                for i, p in enumerate(fp.of_type(kind)):
                    q = fn(p)
                    if q is None:
                        skipped.append(SkippedSentence(fp.key, kind, reason, p))
                        continue
                    kept[kind].append(q)
                    if kind == "T3" and i < len(fp.t3_sources):
                        sources.append(fp.t3_sources[i])
            facts.append(
                FactPrompts(
                    fp.key,
                    fp.relation,
                    fp.subject,
                    fp.object,
                    tuple(kept["T1"]),
                    tuple(kept["T2"]),
                    tuple(kept["T3"]),
                    tuple(sources),
                )
            )
        return WebPromptSet(facts, skipped, self.seed)


def build_fact_prompts(
    fact: WebFact,
    pool: Sequence[tuple[str, Any]],
    *,
    seed: int = 0,
    first_words: int = 50,
) -> tuple[FactPrompts, list[SkippedSentence]]:
    """T1/T2/T3 prompts of one fact; see the module docstring for the rules.

    Args:
        fact: the fact and its sentences.
        pool: ``(source fact key, sentence)`` pairs that T3 samples from.
        seed: combined with the fact key to seed this fact's random generator.
        first_words: T2/T3 mask among this many first words (``PaperConfig.t2_first_words``).
    """
    rng = random.Random(f"{seed}/{fact.key}")
    skipped: list[SkippedSentence] = []
    t1: list[str] = []
    t2: list[str] = []
    t3: list[str] = []
    t3_src: list[Any] = []
    for s in fact.th_bags:
        try:
            t1.append(mask_tail(s, fact.subject, fact.object))
        except MaskError as e:
            skipped.append(SkippedSentence(fact.key, "T1", e.reason, str(s)))
    for s in fact.h_bags:
        try:
            t2.append(mask_random_word(s, rng, first_words=first_words, protect=fact.subject))
        except MaskError as e:
            skipped.append(SkippedSentence(fact.key, "T2", e.reason, str(s)))
    # T3: as many as T1 has; draw without replacement, skipping (and counting) unmaskable ones.
    if t1 and pool:
        # Draw distinct pool sentences; a spare margin covers unmaskable ones (counted below).
        for j in rng.sample(range(len(pool)), min(len(pool), 2 * len(t1) + 20)):
            if len(t3) == len(t1):
                break
            src, s = pool[j]
            try:
                t3.append(mask_random_word(s, rng, first_words=first_words))
                t3_src.append(src)
            except MaskError as e:
                skipped.append(SkippedSentence(fact.key, "T3", e.reason, str(s)))
    fp = FactPrompts(
        fact.key,
        fact.relation,
        fact.subject,
        fact.object,
        tuple(t1),
        tuple(t2),
        tuple(t3),
        tuple(t3_src),
    )
    return fp, skipped


def sentence_pool(web_facts: Mapping[str, Sequence[WebFact]]) -> list[tuple[str, Any]]:
    """Every ``th``/``h`` sentence of every fact, as ``(fact key, sentence)``, in a fixed order."""
    return [
        (f.key, s)
        for rel in sorted(web_facts)
        for f in web_facts[rel]
        for s in (*f.th_bags, *f.h_bags)
    ]


def build_web_prompts(
    web_facts: Mapping[str, Sequence[WebFact]],
    *,
    keys: Iterable[str] | None = None,
    seed: int = 0,
    first_words: int = 50,
    pool: Sequence[tuple[str, Any]] | None = None,
) -> WebPromptSet:
    """T1/T2/T3 prompts for many facts.

    Args:
        web_facts: ``{relation: [WebFact, ...]}`` (from :func:`load_web_facts`,
            :func:`web_facts_from_dict` or :func:`default_web_facts`).
        keys: build only these fact keys (default: all). An unknown key raises ``DataError``.
        seed: seed of the per-fact random generators (``PaperConfig.seed``).
        first_words: ``PaperConfig.t2_first_words``.
        pool: the T3 sentence pool (default: :func:`sentence_pool` of ``web_facts``, i.e. the whole
            loaded data, as the paper does).
    """
    all_facts = {f.key: f for rel in web_facts for f in web_facts[rel]}
    if keys is None:
        chosen = list(all_facts.values())
    else:
        keys = list(keys)
        unknown = [k for k in keys if k not in all_facts]
        if unknown:
            raise DataError(f"no web sentences for fact key(s) {', '.join(unknown[:10])}")
        chosen = [all_facts[k] for k in keys]
    pool = sentence_pool(web_facts) if pool is None else pool
    facts, skipped = [], []
    for f in chosen:
        fp, sk = build_fact_prompts(f, pool, seed=seed, first_words=first_words)
        facts.append(fp)
        skipped.extend(sk)
    return WebPromptSet(facts, skipped, seed)


def select_facts(
    web_facts: Mapping[str, Sequence[WebFact]],
    neurons: Mapping[str, Sequence[Any]],
    *,
    bags: Sequence[FactBag] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The fact keys to analyse (those with neurons and web sentences) and the skipped ones.

    With ``bags``, each bag is first checked against the web data by relation and index
    (:func:`match_bags`); a subject/object mismatch raises ``DataError``.
    """
    if bags is not None:
        match_bags(web_facts, bags)
    known = {f.key for rel in web_facts for f in web_facts[rel]}
    keys, skipped = [], {}
    for key, ns in neurons.items():
        if not ns:
            skipped[key] = "no_neurons"
        elif key not in known:
            skipped[key] = "no_web_sentences"
        else:
            keys.append(key)
    return keys, skipped
