"""Do knowledge neurons found on some paraphrases work on the others? (beyond the paper)

The paper finds and tests a fact's neurons on the same prompts. Here each bag's prompts are split
in two halves by a generator seeded with ``config.seed`` and the bag's key: the *finding* half
(``ceil(n / 2)`` prompts) and the *held-out* half (the rest). Knowledge neurons are identified from
the finding halves alone, with the paper's procedure and its adaptive sharing threshold per
relation, from the stored attribution scores (no new gradients). Then, on the held-out prompts,
they are suppressed (activation set to 0 at the read position), and so are as many random neurons
from the same layers (:func:`kn_lens.experiments.controls.random_control`, drawn as ``modify``
draws them), and the change of the correct answer's probability is measured: ``mean Δp / mean
p`` in percent, per relation and over relations, with the share of held-out prompts whose top-1
prediction flips. The same is reported on the finding half, for comparison. Bags of fewer than 2
prompts cannot be split and are skipped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import random_control
from kn_lens.experiments.modify import change_pct
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.interventions import scaled_answer_reads
from kn_lens.knowledge_neurons import BagScores, identify_all
from kn_lens.models.family import Model
from kn_lens.readout import encode_facts
from kn_lens.results import (
    ReportRow,
    Result,
    dig,
    is_number,
    mean_or_nan,
    percent,
    relative_change,
    report_row,
)

PAPER: dict[str, Any] = {
    "note": "Not in the paper: it finds and tests neurons on the same prompts.",
}
ARMS: tuple[str, ...] = ("ours", "random")
HALVES: tuple[str, ...] = ("heldout", "finding")


def split_prompts(n: int, seed: int, key: str) -> tuple[list[int], list[int]]:
    """``(finding, heldout)`` prompt indices of a bag of ``n`` prompts, seeded by its key."""
    idx = list(range(n))
    random.Random(f"{seed}:heldout:{key}").shuffle(idx)
    k = (n + 1) // 2
    return sorted(idx[:k]), sorted(idx[k:])


@dataclass
class HeldoutFact:
    """One fact: its halves, its neurons (found on the finding half), and per arm and half the
    mean unmodified probability ``p``, its change under suppression ``delta`` and the ``flip``
    share."""

    key: str
    relation: str
    finding: list[int]
    heldout: list[int]
    neurons: list[tuple[int, int]]
    p: dict[str, float]
    delta: dict[str, dict[str, float]]
    flip: dict[str, dict[str, float]]


@dataclass
class HeldoutResult(Result):
    """Held-out paraphrases (schema ``"heldout"``).

    Attributes:
        relations: relation -> ``{"p", "n_facts", "neurons_per_fact", "converged", arm: {half:
            {"pct", "flip"}}}``.
        overall: arm -> half -> ``{"pct", "flip", "n_relations", "n_facts"}`` (means over
            relations).
        facts: per fact, :class:`HeldoutFact`.
        skipped_facts: key -> reason.
    """

    schema = "heldout"

    relations: dict[str, dict[str, Any]]
    overall: dict[str, dict[str, dict[str, float]]]
    facts: list[HeldoutFact]
    skipped_facts: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def heldout_paraphrases(
    model: Model,
    bags: Sequence[FactBag],
    scores: Sequence[BagScores],
    config: PaperConfig = PaperConfig(),
    *,
    progress: bool = False,
) -> HeldoutResult:
    """See the module docstring. ``scores`` are the bags' stored attribution records (same prompt
    order as ``bags``)."""
    by_key = {s.key: s for s in scores}
    skipped: dict[str, str] = {}
    halves: dict[str, tuple[list[int], list[int]]] = {}
    finding_scores: list[BagScores] = []
    for b in bags:
        s = by_key.get(b.key)
        if s is None:
            skipped[b.key] = "no_scores"
        elif len(b.prompts) < 2 or s.n_prompts != len(b.prompts):
            skipped[b.key] = "fewer_than_2_prompts"
        else:
            halves[b.key] = split_prompts(len(b.prompts), config.seed, b.key)
            finding_scores.append(s.select_prompts(halves[b.key][0]))
    if not finding_scores:
        raise KnLensError("no bag with scores and at least 2 prompts")
    d_mlp = finding_scores[0].d_mlp
    found = identify_all(finding_scores, config, config.method)
    facts: list[HeldoutFact] = []
    it: Iterable[FactBag] = [b for b in bags if b.key in halves]
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(list(it), desc="held-out paraphrases", unit="fact")
    for b in it:
        neurons = found[b.relation].neurons.get(b.key, [])
        if not neurons:
            skipped[b.key] = "no_neurons_on_the_finding_half"
            continue
        arms = {"ours": list(neurons), "random": random_control(neurons, d_mlp, config.seed, b.key)}
        enc = encode_facts(model, list(b.prompts), [b.object] * len(b.prompts))
        base, base_top = scaled_answer_reads(model, enc, [], None, batch_size=config.batch_size)
        fnd, held = halves[b.key]
        p = {"finding": float(base[fnd].mean()), "heldout": float(base[held].mean())}
        delta: dict[str, dict[str, float]] = {}
        flip: dict[str, dict[str, float]] = {}
        for arm, ns in arms.items():
            probs, top = scaled_answer_reads(model, enc, ns, 0.0, batch_size=config.batch_size)
            d = probs - base
            delta[arm] = {"finding": float(d[fnd].mean()), "heldout": float(d[held].mean())}
            changed = (top != base_top).float()
            flip[arm] = {
                "finding": float(changed[fnd].mean()),
                "heldout": float(changed[held].mean()),
            }
        facts.append(
            HeldoutFact(
                b.key, b.relation, fnd, held, [(n.layer, n.index) for n in neurons], p, delta, flip
            )
        )
    relations: dict[str, dict[str, Any]] = {}
    for rel, rn in found.items():
        fs = [f for f in facts if f.relation == rel]
        entry: dict[str, Any] = {
            "p": rn.p,
            "converged": rn.converged,
            "neurons_per_fact": rn.mean_neurons,
            "n_facts": len(fs),
        }
        for arm in ARMS:
            entry[arm] = {
                h: {
                    "pct": change_pct(
                        mean_or_nan(f.delta[arm][h] for f in fs), mean_or_nan(f.p[h] for f in fs)
                    ),
                    "flip": mean_or_nan(f.flip[arm][h] for f in fs),
                }
                for h in HALVES
            }
        relations[rel] = entry
    overall: dict[str, dict[str, dict[str, float]]] = {}
    used = [r for r in relations.values() if r["n_facts"]]
    for arm in ARMS:
        overall[arm] = {}
        for h in HALVES:
            pcts = [r[arm][h]["pct"] for r in used if math.isfinite(r[arm][h]["pct"])]
            flips = [r[arm][h]["flip"] for r in used if math.isfinite(r[arm][h]["flip"])]
            overall[arm][h] = {
                "pct": mean_or_nan(pcts),
                "flip": mean_or_nan(flips),
                "n_relations": len(used),
                "n_facts": sum(r["n_facts"] for r in used),
            }
    return HeldoutResult(
        relations, overall, facts, skipped, {"seed": config.seed, "operation": "suppress"}
    )


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """Suppression on held-out and finding prompts, knowledge neurons vs random neurons."""
    rows = []
    facts = [f for f in result.get("facts", []) if isinstance(f, dict)]
    for half, label in (("heldout", "held-out prompts"), ("finding", "prompts they were found on")):
        ps = [p for f in facts if is_number(p := dig(f, "p", half))]
        p_mean = mean_or_nan(ps) if ps else None
        for arm, who in (("ours", "knowledge neurons"), ("random", "random neurons")):
            rows.append(
                report_row(
                    f"suppress, {label}: % change of correct-answer probability ({who})",
                    "-",
                    relative_change(dig(result, "overall", arm, half, "pct"), p_mean),
                )
            )
            rows.append(
                report_row(
                    f"suppress, {label}: % of prompts whose top-1 flips ({who})",
                    "-",
                    percent(dig(result, "overall", arm, half, "flip")),
                )
            )
    return rows


def run(inputs: AnalysisInputs) -> HeldoutResult:
    """The registry's ``heldout``: :func:`heldout_paraphrases` on the stored scores."""
    return heldout_paraphrases(
        inputs.require_model(), inputs.bags, inputs.scores, inputs.config, progress=inputs.progress
    )


ANALYSIS = Analysis(
    "heldout",
    "Held-out paraphrases (beyond the paper)",
    run,
    PAPER,
    (plots.heldout_figure,),
    report_rows,
    needs_scores=True,
)
