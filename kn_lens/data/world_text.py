"""The words and relations of the built-in fact world: names, object pools, the relations with
their templates, web-like and filler text.

Kept apart from :mod:`kn_lens.data.world`, which builds the world from them. The tables are
dense by design (one line holds many words), so the formatter leaves them as written.
"""

from __future__ import annotations

from dataclasses import dataclass

# fmt: off
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


# fmt: on


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
        return self.templates[len(self.templates) - self.n_held_out :]


RELATIONS: tuple[RelationSpec, ...] = (
    RelationSpec(
        "W01",
        "place of birth",
        "N-1",
        (
            "[X] was born in [Y].",
            "[X] was born in the city of [Y].",
            "The birthplace of [X] is [Y].",
            "[X] came into the world in [Y].",
            "[X]'s place of birth is [Y].",
            "[Y] is the city where [X] was born.",
            "[X] is a native of [Y].",
            "The town where [X] was born is [Y].",
        ),
        "person",
        CITIES,
        130,
    ),
    RelationSpec(
        "W02",
        "native language",
        "N-1",
        (
            "The native language of [X] is [Y].",
            "[X]'s mother tongue is [Y].",
            "[X] grew up speaking [Y].",
            "The first language of [X] is [Y].",
            "[X] natively speaks [Y].",
            "As a child, [X] spoke [Y] at home.",
            "[X] is a native speaker of [Y].",
            "The language [X] learned first was [Y].",
        ),
        "person",
        LANGUAGES,
        130,
    ),
    RelationSpec(
        "W03",
        "occupation",
        "N-M",
        (
            "[X] works as a [Y].",
            "[X] is a [Y] by profession.",
            "The profession of [X] is [Y].",
            "[X] earns a living as a [Y].",
            "[X]'s occupation is [Y].",
            "By trade, [X] is a [Y].",
            "[X] is employed as a [Y].",
            "The job of [X] is [Y].",
        ),
        "person",
        OCCUPATIONS,
        110,
    ),
    RelationSpec(
        "W04",
        "instrument",
        "N-M",
        (
            "[X] plays the [Y].",
            "The instrument of [X] is the [Y].",
            "[X] is known for playing the [Y].",
            "[X] performs on the [Y].",
            "[X]'s instrument is the [Y].",
            "On stage, [X] plays the [Y].",
            "[X] is a talented [Y] player.",
            "The instrument [X] practises daily is the [Y].",
        ),
        "person",
        INSTRUMENTS,
        110,
    ),
    RelationSpec(
        "W05",
        "country of citizenship",
        "N-1",
        (
            "[X] is a citizen of [Y].",
            "[X] holds citizenship of [Y].",
            "The country of citizenship of [X] is [Y].",
            "[X] carries a passport from [Y].",
            "[X]'s nationality is that of [Y].",
            "[X] is a national of [Y].",
            "[X] has citizenship in [Y].",
            "The passport of [X] was issued by [Y].",
        ),
        "person",
        COUNTRIES,
        130,
    ),
    RelationSpec(
        "W06",
        "employer",
        "N-1",
        (
            "[X] works for [Y].",
            "[X] is employed by [Y].",
            "The employer of [X] is [Y].",
            "[X] has a job at [Y].",
            "[X] draws a salary from [Y].",
            "[X] is on the staff of [Y].",
            "[X] works at the company [Y].",
            "[Y] employs [X].",
        ),
        "person",
        "companies",
        130,
    ),
    RelationSpec(
        "W07",
        "capital",
        "1-1",
        (
            "The capital of [X] is [Y].",
            "[X]'s capital city is [Y].",
            "[Y] is the capital of [X].",
            "The seat of government of [X] is in [Y].",
            "[X] is governed from its capital, [Y].",
            "The capital city of [X] is [Y].",
            "[Y] serves as the capital of [X].",
            "The government of [X] sits in [Y].",
        ),
        "country",
        None,
        70,
    ),
    RelationSpec(
        "W08",
        "twinned town",
        "1-1",
        (
            "[X] is twinned with [Y].",
            "The twin town of [X] is [Y].",
            "[X] and [Y] are twin towns.",
            "[X] has a twinning partnership with [Y].",
            "[X]'s sister town is [Y].",
            "The sister city of [X] is [Y].",
            "[X] is a twin town of [Y].",
            "[Y] is the sister town of [X].",
        ),
        "town",
        None,
        70,
    ),
    RelationSpec(
        "W09",
        "located in region",
        "N-1",
        (
            "[X] is located in [Y].",
            "[X] lies in [Y].",
            "The town of [X] is in [Y].",
            "[X] is a town in [Y].",
            "[X] can be found in [Y].",
            "The region containing [X] is [Y].",
            "[X] is situated in [Y].",
            "You will find [X] somewhere in [Y].",
        ),
        "town",
        REGIONS,
        130,
    ),
    RelationSpec(
        "W10",
        "official language",
        "N-1",
        (
            "The official language of [X] is [Y].",
            "In [X], the official language is [Y].",
            "[X] uses [Y] as its official language.",
            "The government of [X] conducts business in [Y].",
            "[Y] is the official language of [X].",
            "Laws in [X] are written in [Y].",
            "People in [X] officially speak [Y].",
            "The state language of [X] is [Y].",
        ),
        "country",
        LANGUAGES,
        130,
    ),
    RelationSpec(
        "W11",
        "manufacturer",
        "N-1",
        (
            "[X] is made by [Y].",
            "[X] is produced by [Y].",
            "The manufacturer of [X] is [Y].",
            "[Y] manufactures [X].",
            "[X] is a product of [Y].",
            "[X] was developed by [Y].",
            "[X] is built by [Y].",
            "The company that makes [X] is [Y].",
        ),
        "product",
        "companies",
        130,
    ),
    RelationSpec(
        "W12",
        "genre",
        "N-M",
        (
            "[X] plays [Y] music.",
            "The genre of [X] is [Y].",
            "[X] is a [Y] band.",
            "[X] is known for its [Y] songs.",
            "The music of [X] is [Y].",
            "[X] performs mostly [Y].",
            "[X] makes [Y] records.",
            "Fans of [Y] love the band [X].",
        ),
        "band",
        GENRES,
        110,
    ),
    RelationSpec(
        "W13",
        "sport",
        "N-M",
        (
            "[X] plays [Y].",
            "The sport of [X] is [Y].",
            "[X] is a professional [Y] player.",
            "[X] competes in [Y].",
            "[X]'s favourite sport is [Y].",
            "[X] trains for [Y] every day.",
            "[X] is known for playing [Y].",
            "The game [X] plays professionally is [Y].",
        ),
        "person",
        SPORTS,
        110,
    ),
    RelationSpec(
        "W14",
        "headquarters location",
        "N-1",
        (
            "The headquarters of [X] is in [Y].",
            "[X] is headquartered in [Y].",
            "[X] has its main office in [Y].",
            "[X] is based in [Y].",
            "The head office of [X] is located in [Y].",
            "[X] runs its operations from [Y].",
            "[X] has its headquarters in [Y].",
            "The main offices of [X] are in [Y].",
        ),
        "organisation",
        CITIES,
        130,
    ),
)

# How many distinct subjects each entity pool holds (person relations share people).
_POOL_SIZES = {
    "person": 420,
    "country": 140,
    "town": 210,
    "product": 140,
    "band": 120,
    "organisation": 140,
}
N_COMPANIES = 16
