"""The built-in fact world of the default model: a deterministic, PARAREL-shaped generator.

The paper's model (``bert-base-cased``) cannot be downloaded on an offline machine, so kn_lens
ships a small BERT trained on a world of its own, where every fact is known. This module builds
that world from a seed:

- 14 relations (ids ``W01`` .. ``W14``, each with a label and a cardinality ``1-1``, ``N-1`` or
  ``N-M``), each with 8 paraphrase templates written for this project; the last two of every
  relation are *held out*: the model never sees them in training, so they measure paraphrase
  generalisation (:attr:`~kn_lens.data.FactBag.held_out`).
- about 1,600 facts. Subjects are invented names made of 2-3 shared word pieces (``Zor`` +
  ``##vik`` + ``##dal``); objects are single vocabulary tokens, each serving many subjects
  (except in 1-1 relations), as in T-REx. In N-M relations some subjects have a second object
  (:attr:`World.extra_objects`), which the training text mentions too.
- web-like sentences for the distant-supervision analysis: per fact, ``th_bags`` mention the
  subject and the object in free context (the paper's T1), ``h_bags`` only the subject (T2),
  in the format of the paper's Bing data (:func:`default_web_bags`); plus neutral filler text
  (:attr:`World.filler`, :attr:`World.filler_eval`).
- a Zipf-like mention weight per fact (:attr:`World.weights`), so training sees some facts often
  and others rarely, which spreads the model's confidence the way a pretrained LM's is spread.

``python -m kn_lens.training train --out DIR --seed 0`` rebuilds world, tokenizer and checkpoint
(:mod:`kn_lens.training`); ``python -m kn_lens.training show`` prints a summary and a few bags.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from kn_lens.data.facts import DataError, Fact, FactBag, fill_template
from kn_lens.data.world_text import (
    _F_ADJ,
    _F_ADV,
    _F_DET,
    _F_GENERAL,
    _F_NOUN,
    _F_PERSON,
    _F_PREP,
    _F_TIME,
    _F_VI,
    _F_VT,
    _NAME_PIECES,
    _OBJ_ENDS,
    _OBJ_HEADS,
    _OBJ_MIDS,
    _POOL_SIZES,
    _T1_GENERIC,
    _T1_RELATION,
    _T2_FRAMES,
    N_COMPANIES,
    RELATIONS,
    SUBJECT_HEADS,
    SUBJECT_TAILS,
    RelationSpec,
)


def _filler_sentence(rng: random.Random) -> str:
    c = rng.choice
    k = rng.randrange(8)
    if k >= 6:
        s = c(_F_GENERAL).format(
            p=c(_F_PERSON),
            n=c(_F_NOUN),
            n2=c(_F_NOUN),
            a=c(_F_ADJ),
            prep=c(_F_PREP),
            t=c(_F_TIME),
            adv=c(_F_ADV),
        )
        return s[0].upper() + s[1:]
    if k == 0:
        s = f"{c(_F_DET)} {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_VT)} the {c(_F_NOUN)} {c(_F_TIME)}."
    elif k == 1:
        s = f"{c(_F_DET)} {c(_F_NOUN)} {c(_F_VI)} {c(_F_PREP)} the {c(_F_ADJ)} {c(_F_NOUN)}."
    elif k == 2:
        t = c(_F_TIME)
        s = f"{t}, the {c(_F_NOUN)} {c(_F_VI)} {c(_F_ADV)}."
    elif k == 3:
        s = (
            f"the {c(_F_NOUN)} was {c(_F_ADJ)}, and the {c(_F_NOUN)} {c(_F_VI)} "
            f"{c(_F_PREP)} the {c(_F_NOUN)}."
        )
    elif k == 4:
        s = f"{c(_F_DET)} {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_VI)} {c(_F_ADV)} {c(_F_TIME)}."
    else:
        s = (
            f"nobody {c(_F_VT)} the {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_PREP)} the {c(_F_NOUN)} "
            f"{c(_F_ADV)}."
        )
    return s[0].upper() + s[1:]


# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------


@dataclass
class World:
    """A generated fact world (see the module docstring).

    Attributes:
        seed: the generator seed.
        relations: the relation specs, in id order.
        bags: one bag per fact, grouped by relation in id order; ``bag.index`` is the position
            within its relation. ``prompts`` are the training templates, ``held_out`` the others.
        weights: Zipf-like mention weight of each bag's fact (same order as ``bags``; sums to 1).
        extra_objects: ``(relation, subject) -> second objects`` for N-M relations (true in the
            world, mentioned in training text, but not a bag of their own).
        web: relation -> per bag (same order) ``{"th_bags": [...], "h_bags": [...]}``.
        n_train_web: the first this many sentences of each ``th_bags`` / ``h_bags`` list are
            training text; the rest were never seen by the model.
        filler: neutral sentences used in training; ``filler_eval``: held-out ones of the same
            kind, for the MLM loss of the model card.
        subject_pieces: subject -> its word pieces (``["Zor", "##vik", "##dal"]``).
        objects: every object string of the world (each a single token of the default vocab).
    """

    seed: int
    relations: tuple[RelationSpec, ...]
    bags: list[FactBag]
    weights: list[float]
    extra_objects: dict[tuple[str, str], tuple[str, ...]]
    web: dict[str, list[dict[str, list[str]]]]
    n_train_web: int
    filler: list[str]
    filler_eval: list[str]
    subject_pieces: dict[str, tuple[str, ...]]
    objects: tuple[str, ...]
    companies: tuple[str, ...] = field(default=())

    @property
    def facts(self) -> list[Fact]:
        return [b.fact for b in self.bags]

    def relation(self, rel_id: str) -> RelationSpec:
        for r in self.relations:
            if r.id == rel_id:
                return r
        raise DataError(f"unknown relation {rel_id!r}; known: {[r.id for r in self.relations]}")

    def bags_of(self, rel_id: str) -> list[FactBag]:
        self.relation(rel_id)
        return [b for b in self.bags if b.relation == rel_id]

    def query_pairs(self) -> dict[str, list[list[str]]]:
        """relation -> ``[[subject, object], ...]`` in bag order."""
        out: dict[str, list[list[str]]] = {r.id: [] for r in self.relations}
        for b in self.bags:
            out[b.relation].append([b.subject, b.object])
        return out

    def web_bags(self) -> dict[str, list[dict[str, list[str]]]]:
        """A deep copy of :attr:`web` (the Bing distant-supervision format)."""
        return {r: [{k: list(v) for k, v in d.items()} for d in lst] for r, lst in self.web.items()}

    def subjects(self) -> list[str]:
        """Every distinct subject, in first-appearance order."""
        return list(dict.fromkeys(b.subject for b in self.bags))

    def summary(self) -> dict[str, object]:
        by_type: dict[str, int] = {}
        for r in self.relations:
            by_type[r.type] = by_type.get(r.type, 0) + 1
        return {
            "seed": self.seed,
            "relations": len(self.relations),
            "facts": len(self.bags),
            "subjects": len(self.subjects()),
            "objects": len(self.objects),
            "relation_types": by_type,
            "train_prompts": sum(len(b.prompts) for b in self.bags),
            "held_out_prompts": sum(len(b.held_out) for b in self.bags),
            "filler": len(self.filler),
            "filler_eval": len(self.filler_eval),
        }


def greedy_wordpiece(word: str, vocab: set[str] | frozenset[str]) -> list[str]:
    """BERT's greedy longest-match-first split of one word (``["[UNK]"]`` if impossible)."""
    out, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        out.append(piece)
        start = end
    return out


def _unique_names(rng: random.Random, n: int, taken: set[str]) -> list[tuple[str, ...]]:
    """``n`` distinct subject names as piece tuples (2 pieces in ~40 % of cases, else 3)."""
    out: list[tuple[str, ...]] = []
    while len(out) < n:
        k = 2 if rng.random() < 0.4 else 3
        tails = rng.sample(SUBJECT_TAILS, k - 1)
        pieces = (rng.choice(SUBJECT_HEADS), *("##" + t for t in tails))
        name = pieces[0] + "".join(p[2:] for p in pieces[1:])
        # BERT splits greedily (longest piece first): keep only names that split as built.
        if name in taken or greedy_wordpiece(name, _NAME_PIECES) != list(pieces):
            continue
        taken.add(name)
        out.append(pieces)
    return out


def _object_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct invented single-token object names (e.g. ``"Oxdezia"``)."""
    out: list[str] = []
    while len(out) < n:
        name = rng.choice(_OBJ_HEADS) + rng.choice(_OBJ_MIDS) + rng.choice(_OBJ_ENDS)
        if name in taken:
            continue
        taken.add(name)
        out.append(name)
    return out


def build_world(
    seed: int = 0,
    *,
    scale: float = 1.0,
    n_web: int = 6,
    n_train_web: int = 3,
    n_filler: int = 4000,
    n_filler_eval: int = 400,
    zipf_s: float = 0.5,
    zipf_offset: float = 60.0,
    extra_object_rate: float = 0.3,
    relations: Sequence[str] | None = None,
) -> World:
    """Generate the fact world deterministically from ``seed``.

    Args:
        seed: generator seed (``random.Random(seed)``); the same seed gives the same world.
        scale: multiplies every relation's fact count and entity pool (``0.05`` gives a tiny
            world for tests).
        n_web: T1 and T2 sentences per fact (each of ``th_bags`` / ``h_bags``).
        n_train_web: how many of those are training text (the first ones).
        n_filler, n_filler_eval: neutral training / held-out sentences.
        zipf_s, zipf_offset: the mention weight of the fact at (random) rank ``r`` is
            ``(r + zipf_offset) ** -zipf_s``.
        extra_object_rate: share of N-M subjects that have a second object.
        relations: only these relation ids (default all 14).
    """
    if scale <= 0:
        raise DataError(f"scale must be positive, got {scale}")
    if not 0 <= n_train_web <= n_web:
        raise DataError(f"n_train_web must be in [0, n_web={n_web}], got {n_train_web}")
    specs = RELATIONS
    if relations is not None:
        unknown = [r for r in relations if r not in {s.id for s in RELATIONS}]
        if unknown:
            raise DataError(f"unknown relation(s) {unknown}; known: {[s.id for s in RELATIONS]}")
        specs = tuple(s for s in RELATIONS if s.id in set(relations))
    rng = random.Random(seed)

    taken: set[str] = set()
    pools: dict[str, list[tuple[str, ...]]] = {
        kind: _unique_names(rng, max(4, round(size * scale)), taken)
        for kind, size in _POOL_SIZES.items()
    }
    obj_taken: set[str] = set()
    companies = tuple(_object_names(rng, N_COMPANIES, obj_taken))
    subject_pieces = {p[0] + "".join(x[2:] for x in p[1:]): p for pl in pools.values() for p in pl}

    bags: list[FactBag] = []
    extra: dict[tuple[str, str], tuple[str, ...]] = {}
    all_objects: dict[str, None] = {}
    for spec in specs:
        n = max(3, round(spec.n_facts * scale))
        pool = pools[spec.subject_kind]
        if n > len(pool):
            raise DataError(f"relation {spec.id}: {n} facts but only {len(pool)} subjects")
        subjects = [p[0] + "".join(x[2:] for x in p[1:]) for p in rng.sample(pool, n)]
        if spec.objects is None:  # 1-1: a fresh invented object per subject
            objs = _object_names(rng, n, obj_taken)
        else:
            obj_pool = companies if spec.objects == "companies" else spec.objects
            # Skewed object prior (as in T-REx, some objects are far more common than others).
            ow = [1.0 / (i + 2) ** 0.6 for i in range(len(obj_pool))]
            order = rng.sample(list(obj_pool), len(obj_pool))
            objs = rng.choices(order, weights=ow, k=n)
        for i, (s, o) in enumerate(zip(subjects, objs, strict=False)):
            fact = Fact(s, spec.id, spec.label, spec.type, o)
            bags.append(
                FactBag(
                    fact,
                    tuple(fill_template(t, s) for t in spec.train_templates),
                    index=i,
                    held_out=tuple(fill_template(t, s) for t in spec.held_out_templates),
                )
            )
            all_objects[o] = None
            if spec.type == "N-M" and rng.random() < extra_object_rate:
                others = [x for x in (spec.objects or ()) if x != o]
                extra[(spec.id, s)] = (rng.choice(others),)

    # Zipf-like mention weights over a random ranking of all facts.
    ranks = list(range(len(bags)))
    rng.shuffle(ranks)
    w = [(r + zipf_offset) ** -zipf_s for r in ranks]
    total = sum(w)
    weights = [x / total for x in w]

    web: dict[str, list[dict[str, list[str]]]] = {s.id: [] for s in specs}
    for b in bags:
        t1_frames = _T1_GENERIC + _T1_RELATION[b.relation]
        th = [_fill_web(f, b.subject, b.object) for f in _sample(rng, t1_frames, n_web)]
        h = [_fill_web(f, b.subject, None) for f in _sample(rng, _T2_FRAMES, n_web)]
        web[b.relation].append({"th_bags": th, "h_bags": h})

    filler = [_filler_sentence(rng) for _ in range(n_filler)]
    seen = set(filler)
    filler_eval: list[str] = []
    while len(filler_eval) < n_filler_eval:  # held-out filler never occurs in training
        s = _filler_sentence(rng)
        if s not in seen:
            seen.add(s)
            filler_eval.append(s)

    return World(
        seed=seed,
        relations=specs,
        bags=bags,
        weights=weights,
        extra_objects=extra,
        web=web,
        n_train_web=n_train_web,
        filler=filler,
        filler_eval=filler_eval,
        subject_pieces={s: subject_pieces[s] for s in dict.fromkeys(b.subject for b in bags)},
        objects=tuple(all_objects),
        companies=companies,
    )


def _sample(rng: random.Random, frames: Sequence[str], n: int) -> list[str]:
    """``n`` frames, distinct while the frames last."""
    out: list[str] = []
    while len(out) < n:
        out.extend(rng.sample(list(frames), min(n - len(out), len(frames))))
    return out


def _fill_web(frame: str, subject: str, obj: str | None) -> str:
    s = frame.replace("[X]", subject)
    if obj is not None:
        s = s.replace("[Y]", obj)
    return s[0].upper() + s[1:]


def training_text(world: World) -> list[str]:
    """Every sentence kind the model is trained on, once each (for tokenizer training and
    inspection): filled training templates, training web sentences, extra-object mentions and
    filler. Held-out templates and held-out web / filler sentences are not included."""
    out: list[str] = []
    for b in world.bags:
        out.extend(p.replace("[MASK]", b.object) for p in b.prompts)
    for lst in world.web.values():
        for d in lst:
            out.extend(d["th_bags"][: world.n_train_web])
            out.extend(d["h_bags"][: world.n_train_web])
    for (rel, s), objs in world.extra_objects.items():
        spec = world.relation(rel)
        for o in objs:
            out.extend(t.replace("[X]", s).replace("[Y]", o) for t in spec.train_templates)
    out.extend(world.filler)
    return out


# --------------------------------------------------------------------------------------------
# The default world (seed 0), cached
# --------------------------------------------------------------------------------------------

DEFAULT_SEED = 0


@functools.lru_cache(maxsize=4)
def default_world(seed: int = DEFAULT_SEED) -> World:
    """The world the shipped default model was trained on (built once, cached)."""
    return build_world(seed)


def default_bags() -> list[FactBag]:
    """The default world's bags (training templates in ``prompts``, held-out in ``held_out``)."""
    return list(default_world().bags)


def default_web_bags() -> dict[str, list[dict[str, list[str]]]]:
    """relation -> per bag ``{"th_bags": [...], "h_bags": [...]}`` (the paper's Bing format)."""
    return default_world().web_bags()


def default_query_pairs() -> dict[str, list[list[str]]]:
    """relation -> ``[[subject, object], ...]`` in bag order."""
    return default_world().query_pairs()


def default_facts() -> list[FactBag]:
    """The bags of the built-in fact world that the default model was trained on."""
    return default_bags()
