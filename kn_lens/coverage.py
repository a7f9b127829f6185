"""Which facts each section of ``results.json`` covers, and whether it is still current.

A run folder collects the results of several commands. A later, smaller run into the same folder
(other relations, fewer facts, other settings) replaces only the sections it runs; the others
were computed on other facts. So every section records the facts it covers
(:func:`section_facts`, under the section's ``"coverage"`` key), with the *selection* it was
computed on: a digest of the run's selected facts and their fingerprints (:func:`selection_id`,
the same fingerprints that guard the attribution store, so other settings are another
selection). ``meta.data.selection`` is the selection of the folder's latest command; a section
with another selection is **stale** (:func:`section_state`), and the report does not show its
numbers as this run's.

Plain data only (no torch): the report reads these from results.json alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Left-out reasons a run should warn about: the facts were asked for but not measured because
#: of the folder's state, not because of the facts themselves.
NOT_IDENTIFIED = (
    "not identified: neurons.json has no entry for it (run `kn-lens attribute` and "
    "`kn-lens identify` with these options)"
)
NO_NEURONS = "no knowledge neurons: identify found none for it"


def selection_id(fingerprints: Mapping[str, str]) -> str:
    """A short digest of the selected facts and their fingerprints (order-free)."""
    text = json.dumps(sorted(fingerprints.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def section_facts(
    selection: str,
    selected: Sequence[str],
    measured: Iterable[str],
    left_out: Mapping[str, str],
) -> dict[str, Any]:
    """The ``"coverage"`` entry of a results.json section::

    {"selection": digest of the run's selected facts, "n_selected": N, "n_measured": M,
     "measured": [fact keys, in selection order], "left_out": {fact key: why}}

    Every selected fact is either measured or left out with its reason.
    """
    got = set(measured)
    keys = [k for k in selected if k in got]
    out = {k: left_out.get(k, "not measured by this analysis") for k in selected if k not in got}
    return {
        "selection": selection,
        "n_selected": len(selected),
        "n_measured": len(keys),
        "measured": keys,
        "left_out": out,
    }


def measured_keys(result: Mapping[str, Any], offered: Sequence[str]) -> list[str]:
    """The facts a result dict measured: the keys of its per-fact records (``facts`` with
    ``key``), else identify's neuron keys, else every offered fact the result does not list as
    skipped (``skipped_facts`` / ``skipped``)."""
    facts = result.get("facts")
    if isinstance(facts, list) and facts and all(isinstance(f, dict) and "key" in f for f in facts):
        keys = {f["key"] for f in facts}
        return [k for k in offered if k in keys]
    neurons = result.get("neurons")
    if isinstance(neurons, dict) and isinstance(neurons.get("ours"), dict):
        return [k for k in offered if k in neurons["ours"]]
    if isinstance(facts, list) and not facts and ("skipped_facts" in result or "skipped" in result):
        return []
    skipped = set(result_skipped(result))
    return [k for k in offered if k not in skipped]


def result_skipped(result: Mapping[str, Any]) -> dict[str, str]:
    """A result dict's own left-out facts: ``skipped_facts`` ({key: reason}) or ``skipped``
    ([{"key", "reason"}])."""
    out: dict[str, str] = {}
    sf = result.get("skipped_facts")
    if isinstance(sf, dict):
        out.update({str(k): str(v) for k, v in sf.items()})
    sk = result.get("skipped")
    if isinstance(sk, list):
        for s in sk:
            if isinstance(s, dict) and "key" in s:
                out[str(s["key"])] = str(s.get("reason", ""))
    return out


def section_state(doc: Mapping[str, Any], name: str) -> str:
    """``"current"`` (computed on the selection of the folder's latest command), ``"stale"``
    (on another selection, or a section without a fact record, from an older kn_lens, in a
    folder a newer one has run on since) or ``"unrecorded"`` (a results.json whose latest
    command recorded no selection: all of it from an older kn_lens)."""
    res = (doc.get("results") or {}).get(name)
    facts = res.get("coverage") if isinstance(res, dict) else None
    now = ((doc.get("meta") or {}).get("data") or {}).get("selection")
    if not now:  # a results.json from an older kn_lens: nothing to compare
        return "unrecorded"
    if not isinstance(facts, dict) or not facts.get("selection"):
        return "stale"  # written by an older kn_lens into a folder a newer one has run on since
    return "current" if facts["selection"] == now else "stale"


def key_list(keys: Sequence[str], limit: int = 8) -> str:
    """``"W01/3, W03/5"``; long lists end with ``"... (N more)"``."""
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def coverage_text(doc: Mapping[str, Any], name: str) -> list[str]:
    """The report's lines on which facts section ``name`` covers (and why others are not)."""
    res = (doc.get("results") or {}).get(name)
    facts = res.get("coverage") if isinstance(res, dict) else None
    state = section_state(doc, name)
    if state == "unrecorded":
        return ["Facts covered: not recorded (a results.json from an older kn_lens)."]
    if not isinstance(facts, dict):
        return [
            "**Stale, numbers not shown:** written by an older kn_lens, which did not record "
            f"the facts it covers. Run `kn-lens {name} --out` this folder to measure them."
        ]
    n_sel, n_meas = facts.get("n_selected"), facts.get("n_measured")
    measured = facts.get("measured") or []
    if state == "stale":
        data = (doc.get("meta") or {}).get("data") or {}
        return [
            f"**Stale, numbers not shown:** computed on {n_meas} fact(s) "
            f"({key_list(measured)}) of another selection of facts or settings; the latest "
            f"command selected {data.get('n_facts', '?')} fact(s). Run `kn-lens {name} --out` "
            "this folder to measure them."
        ]
    lines = [f"Facts: {n_meas} of the {n_sel} selected measured ({key_list(measured)})."]
    left = facts.get("left_out") or {}
    if left:
        by_reason: dict[str, list[str]] = {}
        for k, why in left.items():
            by_reason.setdefault(str(why), []).append(str(k))
        for why, keys in by_reason.items():
            lines.append(f"Left out, {why}: {key_list(keys)}.")
    return lines


__all__ = [
    "NOT_IDENTIFIED",
    "NO_NEURONS",
    "coverage_text",
    "key_list",
    "measured_keys",
    "result_skipped",
    "section_facts",
    "section_state",
    "selection_id",
]
