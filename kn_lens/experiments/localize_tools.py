"""The pure pieces of :mod:`kn_lens.experiments.localize`: the foils, the seeded samples, the
neuron selection at a fixed count, the overlap measures; and how the analysis shows in the
report (its paper-vs-run rows, its table of methods x measures and its figure, all from the
result's plain-dict form, ``LocalizeResult.to_dict()``)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from torch import Tensor

from kn_lens.bag_scores import BagScores
from kn_lens.data import FactBag
from kn_lens.errors import KnLensError
from kn_lens.experiments.controls import seeded_rng
from kn_lens.knowledge_neurons import coarse_neurons, refine
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron
from kn_lens.readout import first_token
from kn_lens.results import ReportRow, dig, report_row

#: Nothing of this is in the paper; the issue's SmolLM2 probe is quoted as a direction only.
PAPER: dict[str, Any] = {
    "note": "Not in the paper, which compares IG with the activation baseline only (modify). "
    "A first SmolLM2-135M probe (6 capital facts) found IG neurons that cost their own fact "
    "95.6% and the other capital facts 89.7%, and logit-difference IG neurons that cost 30.2% "
    "and 1.2%.",
}

#: The figure's bars and the table's columns: measure -> label.
LABELS: dict[str, str] = {
    "suppress_own": "own prompts",
    "suppress_same_relation": "same relation",
    "suppress_other_relations": "other relations",
    "heldout_suppress": "held-out prompts",
}
_COLOURS = {
    "ig": "#1f77b4",
    "activation": "#ff7f0e",
    "grad_x_act": "#2ca02c",
    "ig_mean_baseline": "#9467bd",
    "ig_contrastive": "#d62728",
    "random": "#969696",
}
_TABLE: tuple[tuple[str, str], ...] = (
    ("n_facts", "facts"),
    ("neurons_per_fact", "neurons/fact"),
    ("suppress_own", "own Δp/p %"),
    ("suppress_same_relation", "same relation %"),
    ("suppress_other_relations", "other relations %"),
    ("flips_own", "top-1 flips (own)"),
    ("heldout_suppress", "held-out %"),
    ("specificity", "specificity"),
    ("overlap_with_ig", "Jaccard with ig"),
    ("spearman_with_ig", "Spearman with ig"),
    ("seconds_per_fact", "s/fact"),
)


def pick_foils(
    model: Model | None, bags: Sequence[FactBag], bag: FactBag, n: int, seed: int
) -> list[str]:
    """Up to ``n`` objects of other facts of ``bag``'s relation among ``bags`` (none equal to its
    own object; with a model, only answers its family can read), drawn from their sorted list
    with a generator seeded by ``seed`` and ``bag.key`` (so not by the facts' order), in the
    order drawn."""
    pool: list[str] = []
    for obj in sorted({b.object for b in bags if b.relation == bag.relation} - {bag.object}):
        if model is not None:
            try:
                first_token(model, obj)
            except KnLensError:
                continue
        pool.append(obj)
    rng = seeded_rng(seed, "localize-foils", bag.key)
    return rng.sample(pool, min(n, len(pool)))


def run_context(model: Model, bags: Sequence[FactBag], settings: Mapping[str, Any]) -> str:
    """A hash of what every fact's measures depend on besides the fact itself: the model's name
    and shape, the settings, and the run's facts (the comparison samples, foils and relation
    means come from them)."""
    cfg = model.cfg
    doc = {
        "model": [str(getattr(cfg, "model_name", "")), cfg.n_layers, cfg.d_mlp, cfg.d_vocab],
        "settings": dict(settings),
        "bags": [[b.key, b.relation, b.subject, b.object, list(b.prompts)] for b in bags],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def fact_fingerprint(
    context: str, bag: FactBag, stored: BagScores, p: float, ig_neurons: Sequence[Neuron]
) -> str:
    """A short hash of one fact's inputs to ``localize``: the :func:`run_context`, the fact, its
    stored scores, its relation's ``p`` and its ig neurons. A kept record is reused only when
    it was computed with the same fingerprint."""
    doc = {
        "context": context,
        "key": bag.key,
        "scores": stored.to_dict(),
        "p": p,
        "ig": [[n.layer, n.index] for n in ig_neurons],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def sample_bags(pool: Sequence[FactBag], n: int, rng: random.Random) -> list[FactBag]:
    """Up to ``n`` of ``pool``, drawn by ``rng``, kept in ``pool``'s order."""
    if len(pool) <= n:
        return list(pool)
    idx = sorted(rng.sample(range(len(pool)), n))
    return [pool[i] for i in idx]


def summed_scores(record: BagScores, method: str) -> dict[Neuron, float]:
    """Each kept neuron's score summed over the record's prompts."""
    out: dict[Neuron, float] = {}
    for ps in record.prompt_scores(method):
        for layer, idx, s in ps.neurons:
            n = Neuron(layer, idx)
            out[n] = out.get(n, 0.0) + s
    return out


def select_neurons(
    record: BagScores, method: str, t: float, p: float, min_shared: int, k: int
) -> list[Neuron]:
    """``k`` neurons of ``record``'s ``method`` scores: the refined ones (coarse at ``t``,
    shared at ``p``) with the highest summed score, then the highest of the rest."""
    refined = refine(coarse_neurons(record, t, method=method), p, min_shared=min_shared)
    sums = summed_scores(record, method)

    def order(n: Neuron) -> tuple[float, int, int]:
        return (-sums.get(n, 0.0), n.layer, n.index)

    picked = sorted(refined, key=order)[:k]
    if len(picked) < k:
        taken = set(picked)
        rest = sorted((n for n in sums if n not in taken), key=order)
        picked += rest[: k - len(picked)]
    return picked


def jaccard(a: Iterable[Neuron], b: Iterable[Neuron]) -> float:
    """``|a & b| / |a | b|`` (NaN for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else math.nan


def _ranks(x: Tensor) -> Tensor:
    """Ranks from 1, ties given their mean rank."""
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(x))
    return (sums / counts)[inverse]


def spearman(a: Mapping[Neuron, float], b: Mapping[Neuron, float]) -> float:
    """Spearman's correlation of two sparse score maps over the neurons either holds (absent =
    0); NaN with fewer than 3 neurons or a constant side."""
    keys = list(dict.fromkeys([*a, *b]))
    if len(keys) < 3:
        return math.nan
    x = torch.tensor([a.get(k, 0.0) for k in keys], dtype=torch.float64)
    y = torch.tensor([b.get(k, 0.0) for k in keys], dtype=torch.float64)
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else math.nan


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """Per method: the own suppression and the specificity (the full table is the section's)."""
    rows = []
    for m, s in (result.get("methods") or {}).items():
        rows.append(
            report_row(
                f"suppress: % change of correct-answer probability, own prompts ({m})",
                "-",
                dig(s, "suppress_own"),
            )
        )
        rows.append(
            report_row(
                f"specificity: own drop beyond the same relation's, points ({m})",
                "-",
                dig(s, "specificity"),
            )
        )
    return rows


def report_table(
    result: Mapping[str, Any], meta: Mapping[str, Any]
) -> tuple[list[str], list[list[Any]]]:
    """Methods x measures, means over facts. Returns ``(header, rows)``."""
    header = ["method", *(label for _, label in _TABLE)]
    methods = result.get("methods") or {}
    rows = [[m, *(dig(s, key) for key, _ in _TABLE)] for m, s in methods.items()]
    return header, rows


def localize_figure(result: Mapping[str, Any], paper: Mapping[str, Any]) -> go.Figure:
    """% change of the correct answer's probability when each method's neurons are suppressed:
    on the fact's own prompts, its relation's other facts, other relations' facts and held-out
    prompts (means over facts)."""
    methods = result.get("methods") or {}
    x = list(LABELS.values())
    fig = go.Figure()
    for m, s in methods.items():
        fig.add_bar(
            x=x,
            y=[dig(s, key) for key in LABELS],
            name=f"{m} (n={dig(s, 'n_facts')})",
            marker_color=_COLOURS.get(m),
        )
    fig.update_layout(
        barmode="group",
        title=f"Suppressing each method's neurons ({result.get('n_facts')} facts)",
        yaxis=dict(title="% change of the correct answer's probability"),
    )
    return fig


__all__ = [
    "LABELS",
    "PAPER",
    "fact_fingerprint",
    "jaccard",
    "localize_figure",
    "pick_foils",
    "report_rows",
    "report_table",
    "run_context",
    "sample_bags",
    "select_neurons",
    "spearman",
    "summed_scores",
]
