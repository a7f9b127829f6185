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
from dataclasses import dataclass, field
from collections.abc import Sequence

from kn_lens.data.facts import Fact, FactBag, fill_template

# --------------------------------------------------------------------------------------------
# Vocabulary of the world
# --------------------------------------------------------------------------------------------

# Subject names: one initial piece + one or two continuation pieces, e.g. "Zor" "##vik" "##dal".
SUBJECT_HEADS: tuple[str, ...] = (
    "Zor", "Kal", "Mur", "Vel", "Tash", "Bren", "Drov", "Fel", "Garm", "Hal", "Ith", "Jor", "Kev",
    "Lor", "Mab", "Nar", "Ost", "Pel", "Quin", "Rav", "Sel", "Tor", "Ulm", "Vor", "Wen", "Yar",
    "Zel", "Cor", "Dun", "Esk", "Brak", "Cael", "Dorn", "Fen", "Gal", "Hesk", "Ilm", "Jat",
    "Krem", "Lun", "Mor", "Nim", "Orv", "Prax", "Ryl", "Sarn", "Thal", "Vask", "Wyr", "Yor",
)
SUBJECT_TAILS: tuple[str, ...] = (
    "vik", "dal", "ora", "mir", "ath", "ulf", "ane", "eth", "rin", "sa", "tov", "wyn", "ald",
    "ith", "una", "gar", "lo", "mek", "ris", "tan", "zo", "bek", "dor", "nes", "quil", "ek", "ova",
    "im", "ul", "yth", "bor", "cen", "dith", "fas", "gen", "hild", "jun", "kor", "lir", "mund",
    "nov", "pin", "rast", "sen", "thor", "vur", "wald", "xen", "zek",
)
_NAME_PIECES = frozenset(SUBJECT_HEADS) | frozenset("##" + t for t in SUBJECT_TAILS)
# Invented single-token object names (capitals, twin towns, companies): built from pieces that
# share no prefix with the subject pieces, and always stored whole in the vocabulary.
_OBJ_HEADS = ("Ab", "Ev", "Ox", "Ux", "Am", "Ib", "Ok", "Ap", "Ez", "Og", "Ar", "Ip")
_OBJ_MIDS = ("ran", "sil", "ton", "mar", "dez", "lun", "pex", "vor", "rak", "nis", "bel", "cas")
_OBJ_ENDS = ("a", "ia", "um", "ex", "is", "on")

CITIES = (
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
    "Cairo", "Lima", "Tokyo", "Seoul", "Delhi", "Sydney", "Toronto", "Chicago", "Boston",
    "Warsaw", "Athens", "Munich", "Geneva", "Milan", "Naples", "Zurich", "Bristol", "Leeds",
    "Glasgow", "Bergen",
)
LANGUAGES = (
    "French", "English", "German", "Italian", "Spanish", "Dutch", "Polish", "Greek", "Swedish",
    "Danish", "Finnish", "Czech", "Turkish", "Japanese", "Korean", "Arabic", "Hindi", "Portuguese",
)
OCCUPATIONS = (
    "doctor", "lawyer", "actor", "painter", "poet", "farmer", "engineer", "teacher", "singer",
    "pilot", "chemist", "architect", "journalist", "soldier", "banker", "dancer", "sculptor",
    "novelist", "nurse", "chef",
)
INSTRUMENTS = (
    "piano", "violin", "guitar", "cello", "flute", "drums", "trumpet", "harp", "organ",
    "clarinet", "saxophone", "banjo",
)
COUNTRIES = (
    "France", "Germany", "Italy", "Spain", "Canada", "Brazil", "Mexico", "Egypt", "India",
    "Japan", "Norway", "Sweden", "Poland", "Greece", "Chile", "Peru", "Kenya", "Ireland",
    "Portugal", "Austria",
)
REGIONS = (
    "Europe", "Asia", "Africa", "America", "Oceania", "Arctic", "Caribbean", "Balkans",
    "Scandinavia", "Siberia", "Patagonia", "Andalusia",
)
GENRES = (
    "jazz", "rock", "blues", "folk", "punk", "opera", "reggae", "techno", "soul", "metal", "disco",
    "gospel",
)
SPORTS = (
    "football", "tennis", "chess", "golf", "rugby", "cricket", "hockey", "boxing", "cycling",
    "rowing", "skiing", "swimming",
)


@dataclass(frozen=True)
class RelationSpec:
    """One relation of the world.

    ``templates`` hold ``[X]`` (subject) and ``[Y]`` (object); the last ``n_held_out`` are never
    used in training. ``subject_kind`` names the entity pool its subjects come from; ``objects``
    is its object pool (``"companies"``: the world's invented companies; ``None``: a fresh
    invented name per fact, for 1-1 relations).
    """

    id: str
    label: str
    type: str
    templates: tuple[str, ...]
    subject_kind: str
    objects: tuple[str, ...] | str | None  # "companies": the world's invented company names
    n_facts: int
    n_held_out: int = 2

    @property
    def train_templates(self) -> tuple[str, ...]:
        return self.templates[: len(self.templates) - self.n_held_out]

    @property
    def held_out_templates(self) -> tuple[str, ...]:
        return self.templates[len(self.templates) - self.n_held_out:]


RELATIONS: tuple[RelationSpec, ...] = (
    RelationSpec("W01", "place of birth", "N-1", (
        "[X] was born in [Y].",
        "[X] was born in the city of [Y].",
        "The birthplace of [X] is [Y].",
        "[X] came into the world in [Y].",
        "[X]'s place of birth is [Y].",
        "[Y] is the city where [X] was born.",
        "[X] is a native of [Y].",
        "The town where [X] was born is [Y].",
    ), "person", CITIES, 130),
    RelationSpec("W02", "native language", "N-1", (
        "The native language of [X] is [Y].",
        "[X]'s mother tongue is [Y].",
        "[X] grew up speaking [Y].",
        "The first language of [X] is [Y].",
        "[X] natively speaks [Y].",
        "As a child, [X] spoke [Y] at home.",
        "[X] is a native speaker of [Y].",
        "The language [X] learned first was [Y].",
    ), "person", LANGUAGES, 130),
    RelationSpec("W03", "occupation", "N-M", (
        "[X] works as a [Y].",
        "[X] is a [Y] by profession.",
        "The profession of [X] is [Y].",
        "[X] earns a living as a [Y].",
        "[X]'s occupation is [Y].",
        "By trade, [X] is a [Y].",
        "[X] is employed as a [Y].",
        "The job of [X] is [Y].",
    ), "person", OCCUPATIONS, 110),
    RelationSpec("W04", "instrument", "N-M", (
        "[X] plays the [Y].",
        "The instrument of [X] is the [Y].",
        "[X] is known for playing the [Y].",
        "[X] performs on the [Y].",
        "[X]'s instrument is the [Y].",
        "On stage, [X] plays the [Y].",
        "[X] is a talented [Y] player.",
        "The instrument [X] practises daily is the [Y].",
    ), "person", INSTRUMENTS, 110),
    RelationSpec("W05", "country of citizenship", "N-1", (
        "[X] is a citizen of [Y].",
        "[X] holds citizenship of [Y].",
        "The country of citizenship of [X] is [Y].",
        "[X] carries a passport from [Y].",
        "[X]'s nationality is that of [Y].",
        "[X] is a national of [Y].",
        "[X] has citizenship in [Y].",
        "The passport of [X] was issued by [Y].",
    ), "person", COUNTRIES, 130),
    RelationSpec("W06", "employer", "N-1", (
        "[X] works for [Y].",
        "[X] is employed by [Y].",
        "The employer of [X] is [Y].",
        "[X] has a job at [Y].",
        "[X] draws a salary from [Y].",
        "[X] is on the staff of [Y].",
        "[X] works at the company [Y].",
        "[Y] employs [X].",
    ), "person", "companies", 130),
    RelationSpec("W07", "capital", "1-1", (
        "The capital of [X] is [Y].",
        "[X]'s capital city is [Y].",
        "[Y] is the capital of [X].",
        "The seat of government of [X] is in [Y].",
        "[X] is governed from its capital, [Y].",
        "The capital city of [X] is [Y].",
        "[Y] serves as the capital of [X].",
        "The government of [X] sits in [Y].",
    ), "country", None, 70),
    RelationSpec("W08", "twinned town", "1-1", (
        "[X] is twinned with [Y].",
        "The twin town of [X] is [Y].",
        "[X] and [Y] are twin towns.",
        "[X] has a twinning partnership with [Y].",
        "[X]'s sister town is [Y].",
        "The sister city of [X] is [Y].",
        "[X] is a twin town of [Y].",
        "[Y] is the sister town of [X].",
    ), "town", None, 70),
    RelationSpec("W09", "located in region", "N-1", (
        "[X] is located in [Y].",
        "[X] lies in [Y].",
        "The town of [X] is in [Y].",
        "[X] is a town in [Y].",
        "[X] can be found in [Y].",
        "The region containing [X] is [Y].",
        "[X] is situated in [Y].",
        "You will find [X] somewhere in [Y].",
    ), "town", REGIONS, 130),
    RelationSpec("W10", "official language", "N-1", (
        "The official language of [X] is [Y].",
        "In [X], the official language is [Y].",
        "[X] uses [Y] as its official language.",
        "The government of [X] conducts business in [Y].",
        "[Y] is the official language of [X].",
        "Laws in [X] are written in [Y].",
        "People in [X] officially speak [Y].",
        "The state language of [X] is [Y].",
    ), "country", LANGUAGES, 130),
    RelationSpec("W11", "manufacturer", "N-1", (
        "[X] is made by [Y].",
        "[X] is produced by [Y].",
        "The manufacturer of [X] is [Y].",
        "[Y] manufactures [X].",
        "[X] is a product of [Y].",
        "[X] was developed by [Y].",
        "[X] is built by [Y].",
        "The company that makes [X] is [Y].",
    ), "product", "companies", 130),
    RelationSpec("W12", "genre", "N-M", (
        "[X] plays [Y] music.",
        "The genre of [X] is [Y].",
        "[X] is a [Y] band.",
        "[X] is known for its [Y] songs.",
        "The music of [X] is [Y].",
        "[X] performs mostly [Y].",
        "[X] makes [Y] records.",
        "Fans of [Y] love the band [X].",
    ), "band", GENRES, 110),
    RelationSpec("W13", "sport", "N-M", (
        "[X] plays [Y].",
        "The sport of [X] is [Y].",
        "[X] is a professional [Y] player.",
        "[X] competes in [Y].",
        "[X]'s favourite sport is [Y].",
        "[X] trains for [Y] every day.",
        "[X] is known for playing [Y].",
        "The game [X] plays professionally is [Y].",
    ), "person", SPORTS, 110),
    RelationSpec("W14", "headquarters location", "N-1", (
        "The headquarters of [X] is in [Y].",
        "[X] is headquartered in [Y].",
        "[X] has its main office in [Y].",
        "[X] is based in [Y].",
        "The head office of [X] is located in [Y].",
        "[X] runs its operations from [Y].",
        "[X] has its headquarters in [Y].",
        "The main offices of [X] are in [Y].",
    ), "organisation", CITIES, 130),
)

# How many distinct subjects each entity pool holds (person relations share people).
_POOL_SIZES = {"person": 420, "country": 140, "town": 210, "product": 140, "band": 120,
               "organisation": 140}
N_COMPANIES = 16

# --- web-like text ---------------------------------------------------------------------------
# T1 frames mention the subject [X] and the object [Y] in free context (not the relation's
# templates); relation-flavoured ones say something related, generic ones just co-mention.
_T1_GENERIC = (
    "A new article about [X] also mentions [Y] twice.",
    "In the old archive, [X] and [Y] appear on the same page.",
    "People who follow [X] often ask about [Y] as well.",
    "The report on [X] includes a short note on [Y].",
    "Last spring, a story linked [X] with [Y] again.",
    "Readers searching for [X] usually end up reading about [Y].",
    "[X] was in the news today, and so was [Y].",
    "A long thread compared [X] and [Y] for hours.",
)
_T1_RELATION = {
    "W01": ("[X] still visits [Y] every winter to see old friends.",
            "Growing up in [Y] shaped the early life of [X].",
            "The streets of [Y] were the first thing [X] ever saw."),
    "W02": ("When [X] gets angry, the words always come out in [Y].",
            "[X] reads poems in [Y] to relax.",
            "Friends say [X] dreams in [Y]."),
    "W03": ("After years of study, [X] finally became a [Y].",
            "Colleagues describe [X] as a careful [Y].",
            "Being a [Y] suits [X] very well."),
    "W04": ("[X] practised the [Y] for hours before the concert.",
            "The sound of the [Y] made [X] famous.",
            "[X] bought a new [Y] last month."),
    "W05": ("[X] voted in the last election in [Y].",
            "[X] proudly waved the flag of [Y].",
            "The embassy of [Y] renewed the papers of [X]."),
    "W06": ("[X] joined [Y] after leaving school.",
            "At [Y], [X] leads a small team.",
            "[X] gave a talk at the annual meeting of [Y]."),
    "W07": ("Travellers to [X] usually land first in [Y].",
            "The parliament building in [Y] is the pride of [X].",
            "Most ministries of [X] are found in [Y]."),
    "W08": ("Every summer, children from [X] visit [Y] on an exchange.",
            "The mayors of [X] and [Y] met again this year.",
            "A festival in [Y] celebrated its friendship with [X]."),
    "W09": ("Tourists exploring [Y] often stop in [X].",
            "The weather around [X] is typical for [Y].",
            "Maps of [Y] always show the small town of [X]."),
    "W10": ("Road signs in [X] are printed in [Y].",
            "Schools in [X] teach every lesson in [Y].",
            "The newspapers of [X] appear in [Y]."),
    "W11": ("Engineers at [Y] improved [X] again this year.",
            "The latest version of [X] came out of a [Y] factory.",
            "[Y] advertised [X] on every bus."),
    "W12": ("Critics call the new album by [X] pure [Y].",
            "At the festival, [X] played a long [Y] set.",
            "Radio stations for [Y] often play [X]."),
    "W13": ("[X] won a medal in [Y] last season.",
            "The coach says [X] was born for [Y].",
            "[X] spends every weekend on [Y]."),
    "W14": ("The staff of [X] commute to offices in [Y].",
            "[X] opened a large building in [Y].",
            "A sign in [Y] points to the offices of [X]."),
}
# T2 frames mention only the subject.
_T2_FRAMES = (
    "[X] gave a long interview last week.",
    "Little is known about the early years of [X].",
    "A photo of [X] was shared many times online.",
    "The page about [X] was edited yesterday.",
    "Many readers first heard of [X] through a friend.",
    "Some critics wrote about [X] this year.",
    "[X] was mentioned in a recent article.",
    "An old letter about [X] was found in a box.",
    "Nobody expected the news about [X] that morning.",
    "A short film about [X] will be shown tonight.",
)
# N-M second objects are mentioned in training text through these.
_EXTRA_FRAMES = (
    "[X] is also a [Y].",
    "Besides everything else, [X] is into [Y].",
    "[X] also has a lot to do with [Y].",
)

# --- neutral filler text (a tiny grammar) ---------------------------------------------------
_F_DET = ("the", "a", "one", "every", "this", "that", "another")
_F_ADJ = ("old", "quiet", "small", "green", "bright", "heavy", "narrow", "warm", "cold", "busy",
          "empty", "wooden", "tall", "strange", "gentle", "dark", "clean", "broken", "young",
          "careful", "lazy", "red", "blue", "long", "short", "new", "simple", "loud")
_F_NOUN = ("garden", "river", "window", "road", "table", "house", "boat", "tree", "bridge", "dog",
           "cat", "bird", "letter", "book", "door", "lamp", "field", "hill", "train", "market",
           "kitchen", "child", "stranger", "neighbour", "farmer", "driver", "painting", "song",
           "cup", "box", "chair", "wall", "shop", "forest", "lake", "village", "cloud", "horse")
_F_VI = ("waited", "slept", "disappeared", "moved", "stopped", "rested", "appeared", "shook",
         "fell", "turned", "stayed", "sang", "laughed", "worked", "wandered")
_F_VT = ("found", "opened", "carried", "watched", "painted", "cleaned", "followed", "noticed",
         "moved", "pushed", "fixed", "passed", "touched", "closed", "visited", "left")
_F_PREP = ("near", "behind", "under", "beside", "across", "inside", "above", "past", "around",
           "towards")
_F_TIME = ("in the morning", "at night", "after lunch", "before dawn", "on Sunday",
           "during the storm", "all afternoon", "last year", "every evening", "for a while",
           "at noon", "in the spring")
_F_ADV = ("slowly", "quickly", "quietly", "again", "suddenly", "carefully", "happily", "twice",
          "silently", "early")


_F_PERSON = ("farmer", "driver", "stranger", "neighbour", "child", "gardener", "baker",
             "sailor", "student", "visitor")
# General-language frames: everyday words a pretrained LM would know from elsewhere.
_F_GENERAL = (
    "A talented {p} practises daily {prep} the {n}.",
    "The company makes {a} boxes and chairs.",
    "The company employs a {a} {p}.",
    "The {n} sits {prep} the {a} {n2} {t}.",
    "The {n} serves as a table {t}.",
    "You will find the {n} somewhere {prep} the {n2}.",
    "The {a} {n} was built {t}.",
    "A new letter was issued {t}.",
    "The {p} learned a new song {t}.",
    "Fans love the {a} {n}.",
    "The {p} is a good speaker.",
    "They played a {a} game {t}.",
    "The state paid for the {a} {n}.",
    "The {p} keeps old records {prep} the {n}.",
    "Nobody plays professionally {t}.",
    "The {p} is situated {prep} the {n}.",
    "The {p} officially opened the {n} {t}.",
    "People speak {adv} {prep} the {n}.",
)


def _filler_sentence(rng: random.Random) -> str:
    c = rng.choice
    k = rng.randrange(8)
    if k >= 6:
        s = c(_F_GENERAL).format(p=c(_F_PERSON), n=c(_F_NOUN), n2=c(_F_NOUN), a=c(_F_ADJ),
                                 prep=c(_F_PREP), t=c(_F_TIME), adv=c(_F_ADV))
        return s[0].upper() + s[1:]
    if k == 0:
        s = f"{c(_F_DET)} {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_VT)} the {c(_F_NOUN)} {c(_F_TIME)}."
    elif k == 1:
        s = f"{c(_F_DET)} {c(_F_NOUN)} {c(_F_VI)} {c(_F_PREP)} the {c(_F_ADJ)} {c(_F_NOUN)}."
    elif k == 2:
        t = c(_F_TIME)
        s = f"{t}, the {c(_F_NOUN)} {c(_F_VI)} {c(_F_ADV)}."
    elif k == 3:
        s = (f"the {c(_F_NOUN)} was {c(_F_ADJ)}, and the {c(_F_NOUN)} {c(_F_VI)} "
             f"{c(_F_PREP)} the {c(_F_NOUN)}.")
    elif k == 4:
        s = f"{c(_F_DET)} {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_VI)} {c(_F_ADV)} {c(_F_TIME)}."
    else:
        s = (f"nobody {c(_F_VT)} the {c(_F_ADJ)} {c(_F_NOUN)} {c(_F_PREP)} the {c(_F_NOUN)} "
             f"{c(_F_ADV)}.")
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
        raise ValueError(f"unknown relation {rel_id!r}; known: {[r.id for r in self.relations]}")

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
        return {"seed": self.seed, "relations": len(self.relations), "facts": len(self.bags),
                "subjects": len(self.subjects()), "objects": len(self.objects),
                "relation_types": by_type,
                "train_prompts": sum(len(b.prompts) for b in self.bags),
                "held_out_prompts": sum(len(b.held_out) for b in self.bags),
                "filler": len(self.filler), "filler_eval": len(self.filler_eval)}


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


def build_world(seed: int = 0, *, scale: float = 1.0, n_web: int = 6, n_train_web: int = 3,
                n_filler: int = 4000, n_filler_eval: int = 400, zipf_s: float = 0.5,
                zipf_offset: float = 60.0, extra_object_rate: float = 0.3,
                relations: Sequence[str] | None = None) -> World:
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
        raise ValueError(f"scale must be positive, got {scale}")
    if not 0 <= n_train_web <= n_web:
        raise ValueError(f"n_train_web must be in [0, n_web={n_web}], got {n_train_web}")
    specs = RELATIONS
    if relations is not None:
        unknown = [r for r in relations if r not in {s.id for s in RELATIONS}]
        if unknown:
            raise ValueError(f"unknown relation(s) {unknown}; known: {[s.id for s in RELATIONS]}")
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
            raise ValueError(f"relation {spec.id}: {n} facts but only {len(pool)} subjects")
        subjects = [p[0] + "".join(x[2:] for x in p[1:]) for p in rng.sample(pool, n)]
        if spec.objects is None:  # 1-1: a fresh invented object per subject
            objs = _object_names(rng, n, obj_taken)
        else:
            obj_pool = companies if spec.objects == "companies" else spec.objects
            # Skewed object prior (as in T-REx, some objects are far more common than others).
            ow = [1.0 / (i + 2) ** 0.6 for i in range(len(obj_pool))]
            order = rng.sample(list(obj_pool), len(obj_pool))
            objs = rng.choices(order, weights=ow, k=n)
        for i, (s, o) in enumerate(zip(subjects, objs)):
            fact = Fact(s, spec.id, spec.label, spec.type, o)
            bags.append(FactBag(
                fact,
                tuple(fill_template(t, s) for t in spec.train_templates),
                index=i,
                held_out=tuple(fill_template(t, s) for t in spec.held_out_templates),
            ))
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

    return World(seed=seed, relations=specs, bags=bags, weights=weights, extra_objects=extra,
                 web=web, n_train_web=n_train_web, filler=filler, filler_eval=filler_eval,
                 subject_pieces={s: subject_pieces[s]
                                 for s in dict.fromkeys(b.subject for b in bags)},
                 objects=tuple(all_objects), companies=companies)


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
    for rel, lst in world.web.items():
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
