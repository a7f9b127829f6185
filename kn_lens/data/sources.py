"""Where the facts of a run come from: the built-in world, a PARAREL/LAMA root, separate LAMA and
PARAREL folders, or a JSON-lines facts file; and the web sentences that go with them.

The command line describes a source with a few options (``--data``, ``--lama``, ``--patterns``,
``--web``, ``--relations``); :func:`load_facts` and :func:`load_web` turn them into facts. Errors
are :class:`~kn_lens.data.facts.DataError` naming the option and the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kn_lens.data.facts import DataError, FactBag, load_jsonl_facts
from kn_lens.data.pararel import load_pararel, load_patterns
from kn_lens.data.web import WebFact, default_web_facts, load_web_facts, web_relations
from kn_lens.data.world import default_facts

DEFAULT = "default"


def _path(p: str) -> Path:
    return Path(p).expanduser()


def check_source(data: str, lama: str | None, patterns: str | None, web: str | None) -> None:
    """Refuse a source whose paths do not exist, naming the option."""
    if data != DEFAULT and not _path(data).exists() and not (lama and patterns):
        raise DataError(
            f"--data {data}: no such file or folder (give 'default', a PARAREL/LAMA "
            "root holding lama/ and pararel/patterns/, or a facts .jsonl file)"
        )
    for opt, value in (("lama", lama), ("patterns", patterns), ("web", web)):
        if value and not _path(value).is_dir():
            raise DataError(f"--{opt} {value}: no such folder")
    if data == DEFAULT and bool(lama) != bool(patterns):
        raise DataError(
            "give both --lama DIR and --patterns DIR, or --data DIR holding lama/ "
            "and pararel/patterns/"
        )


def _is_pararel(data: str, lama: str | None, patterns: str | None) -> bool:
    """Whether the source is a PARAREL/LAMA root or explicit folders (not the built-in world, not
    a facts file)."""
    if data == DEFAULT:
        return bool(lama and patterns)
    return not _path(data).is_file()


def _pararel_dirs(data: str, lama: str | None, patterns: str | None) -> tuple[Path, Path]:
    """The LAMA and PARAREL pattern folders of a PARAREL source (explicit folders override the
    root's); ``DataError`` naming the option when one is missing."""
    root = _path(data) if data != DEFAULT else None
    lama_dir = _path(lama) if lama else (root / "lama" if root else None)
    pat_dir = _path(patterns) if patterns else (root / "pararel" / "patterns" if root else None)
    for d, opt in ((lama_dir, "--lama"), (pat_dir, "--patterns")):
        if d is None or not d.is_dir():
            raise DataError(
                f"data folder not found: {d} (give {opt} DIR, or --data DIR with "
                "lama/ and pararel/patterns/ inside)"
            )
    assert lama_dir is not None and pat_dir is not None
    return lama_dir, pat_dir


def load_templates(
    data: str, lama: str | None, patterns: str | None, relations: Sequence[str]
) -> dict[str, list[str]] | None:
    """The PARAREL templates of ``relations`` (``[X]`` subject, ``[Y]`` answer), whether or not
    their facts are selected; a relation without a patterns file is left out. ``None`` for a
    source without templates (the built-in world, a facts file)."""
    check_source(data, lama, patterns, None)
    if not _is_pararel(data, lama, patterns):
        return None
    _, pat_dir = _pararel_dirs(data, lama, patterns)
    return {
        r: load_patterns(pat_dir / f"{r}.jsonl")
        for r in relations
        if (pat_dir / f"{r}.jsonl").is_file()
    }


def load_facts(
    data: str,
    lama: str | None = None,
    patterns: str | None = None,
    relations: Sequence[str] | None = None,
) -> list[FactBag]:
    """All facts of a source, relations in load order, facts in index order.

    Args:
        data: ``"default"`` (the built-in world), a PARAREL/LAMA root (``lama/`` and
            ``pararel/patterns/`` inside), or a facts ``.jsonl`` file.
        lama, patterns: explicit LAMA and PARAREL folders (override the root's).
        relations: only these relation ids; an unknown one is an error naming it.
    """
    check_source(data, lama, patterns, None)
    if _is_pararel(data, lama, patterns):
        lama_dir, pat_dir = _pararel_dirs(data, lama, patterns)
        return load_pararel(lama_dir, pat_dir, relations=relations)
    if data == DEFAULT:
        bags, kind = default_facts(), "the built-in fact world"
    else:
        bags, kind = load_jsonl_facts(_path(data)), str(data)
    if relations is not None:
        have = list(dict.fromkeys(b.relation for b in bags))
        unknown = [r for r in relations if r not in have]
        if unknown:
            raise DataError(
                f"unknown relation(s) {', '.join(unknown)} in {kind}; available: " + ", ".join(have)
            )
        bags = [b for b in bags if b.relation in set(relations)]
    return bags


def web_folder(data: str, web: str | None) -> Path | None:
    """The web-sentence folder of a source: ``--web``, else ``DATA/bing_distant`` when it exists."""
    if web:
        return _path(web)
    if data != DEFAULT and _path(data).is_dir() and (_path(data) / "bing_distant").is_dir():
        return _path(data) / "bing_distant"
    return None


def load_web(
    data: str, lama: str | None, patterns: str | None, web: str | None, relations: Sequence[str]
) -> Mapping[str, Sequence[WebFact]]:
    """Web sentences of ``relations``: from ``--web`` or ``DATA/bing_distant``, or the built-in
    world's own sentences for the built-in facts. Relations without sentences are left out; none
    at all is an error."""
    folder = web_folder(data, web)
    if folder is None:
        if data != DEFAULT or (lama and patterns):
            raise DataError(
                "web sentences are needed: give --web DIR (a folder of "
                "final_distant_allbags_<relation>_new.json and query_pairs.json)"
            )
        return default_web_facts()
    have = web_relations(folder)
    rels = [r for r in relations if r in have]
    if not rels:
        raise DataError(
            f"no web sentences in {folder} for the selected relation(s) "
            f"{', '.join(relations)}; it has: {', '.join(have) or 'none'}"
        )
    return load_web_facts(folder, relations=rels)
