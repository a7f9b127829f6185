"""Which web sentences activate a fact's knowledge neurons most and least? (paper, Table 5)

For each fact, its web prompts (by default T1 and T2, see :mod:`kn_lens.data.web`) are scored by the
summed activation of the fact's knowledge neurons at ``[MASK]`` (for a decoder: at the last token
of the text before the masked word) and ranked. The top ``k`` and the
bottom ``k`` (``PaperConfig.top_k_prompts``, 3) are kept with their scores. The paper finds that
the top prompts state the fact (the tail is the masked word), while the bottom ones do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.data.web import PROMPT_TYPES, WebFact, WebPromptSet, build_web_prompts, select_facts
from kn_lens.errors import KnLensError
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.interventions import grouped_activations
from kn_lens.models.family import Model, family_of
from kn_lens.neuron import Neuron, neurons_from_json
from kn_lens.results import (
    ReportRow,
    Result,
    dig,
    fmt,
    mean_or_nan,
    percent,
    report_row,
    spread_by_relation,
)

#: The paper (Table 3) shows examples only: the top prompts state the fact, the bottom ones do not.
PAPER: dict[str, Any] = {
    "note": "The paper shows examples only: the most activating prompts state the fact (T1), the "
    "least activating do not."
}


@dataclass
class ScoredPrompt:
    """One web prompt and its score.

    Attributes:
        prompt: the masked sentence (exactly one ``[MASK]``).
        type: ``"T1"`` (head and tail, tail masked) or ``"T2"`` (head only, random word masked),
            or ``"T3"`` when requested.
        score: sum over the fact's knowledge neurons of their activation at ``[MASK]``.
    """

    prompt: str
    type: str
    score: float


@dataclass
class FactTriggers:
    """A fact's most and least activating prompts.

    Attributes:
        key, relation, subject, object: the fact.
        neurons: its knowledge neurons as ``[layer, index]``.
        n_ranked: number of prompts ranked.
        top: the ``k`` highest-scoring prompts, highest first.
        bottom: the ``k`` lowest-scoring prompts, lowest first (overlaps ``top`` when
            ``n_ranked < 2k``).
    """

    key: str
    relation: str
    subject: str
    object: str
    neurons: list[tuple[int, int]]
    n_ranked: int
    top: list[ScoredPrompt]
    bottom: list[ScoredPrompt]


@dataclass
class TriggerResult(Result):
    """Most/least activating web prompts per fact (schema ``"trigger"``).

    Attributes:
        k: prompts kept at each end.
        types: the prompt types ranked (default ``("T1", "T2")``).
        facts: one :class:`FactTriggers` per fact with neurons and at least one prompt.
        top_t1_share: fraction of all ``top`` prompts that are T1 (the paper's expectation: high).
        bottom_t1_share: fraction of all ``bottom`` prompts that are T1.
        skipped_facts: fact key -> reason (``"no_neurons"``, ``"no_web_sentences"``,
            ``"no_prompts"``).
        settings: seed, max_tokens, first_words used.
    """

    schema = "trigger"

    k: int
    types: tuple[str, ...]
    facts: list[FactTriggers]
    top_t1_share: float = float("nan")
    bottom_t1_share: float = float("nan")
    skipped_facts: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _share_t1(items: Sequence[ScoredPrompt]) -> float:
    return mean_or_nan(p.type == "T1" for p in items)


def activating_prompts(
    model: Model,
    web_facts: Mapping[str, Sequence[WebFact]],
    neurons: Mapping[str, Sequence[Neuron]],
    *,
    k: int | None = None,
    types: Sequence[str] = ("T1", "T2"),
    bags: Sequence[FactBag] | None = None,
    config: PaperConfig = PaperConfig(),
    prompts: WebPromptSet | None = None,
    progress: bool = False,
) -> TriggerResult:
    """Rank each fact's web prompts by the summed activation of its knowledge neurons.

    Args:
        model: a ``HookedEncoder`` or ``HookedTransformer`` with its tokenizer.
        web_facts: ``{relation: [WebFact, ...]}``.
        neurons: bag key -> knowledge neurons; only these facts are ranked.
        k: prompts kept at each end (default ``config.top_k_prompts``, 3).
        types: prompt types to rank, any of ``"T1"``, ``"T2"``, ``"T3"``.
        bags: if given, checked to agree with ``web_facts``.
        config: seed, ``max_tokens``, ``t2_first_words``, ``top_k_prompts``.
        prompts: prebuilt prompts (default: built with ``config.seed``).
        progress: show a progress bar.
    """
    k = config.top_k_prompts if k is None else int(k)
    if k < 1:
        raise KnLensError(f"k must be >= 1, got {k}")
    bad = [t for t in types if t not in PROMPT_TYPES]
    if bad or not types:
        raise KnLensError(f"unknown prompt type(s) {bad}; expected some of {PROMPT_TYPES}")
    keys, skipped = select_facts(web_facts, neurons, bags=bags)
    if prompts is None:
        prompts = build_web_prompts(
            web_facts, keys=keys, seed=config.seed, first_words=config.t2_first_words
        )
    # As the model reads them: an encoder keeps the masked prompt, a decoder its text before
    # the masked word (prompts with none are dropped and counted).
    prompts = prompts.map_prompts(family_of(model).model_prompt, "no_text_before_the_word")
    by_key = prompts.by_key()
    chosen, items = [], []
    for key in keys:
        fp = by_key.get(key)
        if fp is None:
            skipped[key] = "no_web_sentences"
            continue
        labelled = [(p, t) for t in types for p in fp.of_type(t)]
        if not labelled:
            skipped[key] = "no_prompts"
            continue
        chosen.append((fp, labelled))
        items.append(([p for p, _ in labelled], list(neurons[key])))
    acts = grouped_activations(
        model,
        items,
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        progress=progress,
        desc="trigger",
    )
    facts = []
    for (fp, labelled), a in zip(chosen, acts, strict=False):
        scores = a.sum(-1).tolist()
        scored = [ScoredPrompt(p, t, float(s)) for (p, t), s in zip(labelled, scores, strict=False)]
        order = sorted(range(len(scored)), key=lambda i: (-scored[i].score, i))
        facts.append(
            FactTriggers(
                key=fp.key,
                relation=fp.relation,
                subject=fp.subject,
                object=fp.object,
                neurons=[
                    (n.layer, n.index)
                    for n in neurons_from_json(list(neurons[fp.key]), f"neurons of {fp.key}")
                ],
                n_ranked=len(scored),
                top=[scored[i] for i in order[:k]],
                bottom=[scored[i] for i in reversed(order[-k:])],
            )
        )
    return TriggerResult(
        k=k,
        types=tuple(types),
        facts=facts,
        top_t1_share=_share_t1([p for f in facts for p in f.top]),
        bottom_t1_share=_share_t1([p for f in facts for p in f.bottom]),
        skipped_facts=skipped,
        settings={
            "seed": config.seed,
            "max_tokens": config.max_tokens,
            "first_words": config.t2_first_words,
        },
    )


def detail_records(result: Mapping[str, Any]) -> list[Any]:
    """The per-fact records of a result's dict form (its ``facts``, one JSON object each), which
    the run folder writes to ``DIR/trigger_prompts.jsonl``."""
    return list(result.get("facts", []))


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """What the paper finds of activating prompts, beside this run's shares."""
    return [
        report_row(
            "% of top prompts that state the fact (T1)",
            "most",
            percent(dig(result, "top_t1_share")),
        ),
        report_row(
            "% of bottom prompts that state the fact (T1)",
            "few",
            percent(dig(result, "bottom_t1_share")),
        ),
    ]


def report_examples(res: Mapping[str, Any], n: int) -> list[str]:
    """A few facts of the result as display lines for the report, one per relation first."""
    out = []
    facts = [f for f in res.get("facts", []) if isinstance(f, dict) and f.get("top")]
    for f in spread_by_relation(facts, n):
        top, bottom = f["top"][0], (f.get("bottom") or [None])[0]
        line = (
            f"{f.get('subject')} --{f.get('relation')}--> {f.get('object')} "
            f"({len(f.get('neurons', []))} neurons): most activating "
            f'"{top.get("prompt")}" ({top.get("type")}, {fmt(top.get("score"))})'
        )
        if bottom:
            line += (
                f'; least activating "{bottom.get("prompt")}" ({bottom.get("type")}, '
                f"{fmt(bottom.get('score'))})"
            )
        out.append(line)
    return out


def run(inputs: AnalysisInputs) -> TriggerResult:
    """The registry's ``trigger``: :func:`activating_prompts` (it writes no file: the run folder
    writes :func:`detail_records` of its result)."""
    return activating_prompts(
        inputs.require_model(),
        inputs.require_web(),
        inputs.neurons,
        bags=inputs.bags,
        config=inputs.config,
        progress=inputs.progress,
    )


ANALYSIS = Analysis(
    "trigger",
    "Prompts that activate knowledge neurons (Sec. 5.2, Tab. 3)",
    run,
    PAPER,
    (plots.trigger_figure,),
    report_rows,
    needs_web=True,
    details=detail_records,
    examples=report_examples,
)
