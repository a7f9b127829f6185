"""Do knowledge neurons fire on web text about their fact? (paper, Section 5.2 / Figure 6)

For each fact with knowledge neurons we build its T1, T2 and T3 web prompts
(:mod:`kn_lens.data.web`):

- **T1**: sentences with the head and the tail, the tail masked;
- **T2**: sentences with only the head, a random word masked;
- **T3**: random sentences from the whole pool, a random word masked.

and read the activation of the fact's knowledge neurons at ``[MASK]``. For a decoder the prompt is
the sentence's text before the masked word (T1: before the object; T2: before a random early word;
T3: before a random word of an unrelated sentence), read at its last position; a prompt with no
text before the word is dropped (counted as ``no_text_before_the_word``). A fact's value for a
type is the mean over its prompts of that type and over its neurons; relation and overall values
are means over facts. The same is done for the activation-baseline neurons, when given. The paper
finds that knowledge neurons fire on T1 and stay near zero on T2/T3, while baseline neurons do not
tell the types apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data import FactBag
from kn_lens.data.web import (
    PROMPT_TYPES,
    FactPrompts,
    WebFact,
    WebPromptSet,
    build_web_prompts,
    select_facts,
)
from kn_lens.experiments.registry import Analysis, AnalysisInputs
from kn_lens.interventions import grouped_activations
from kn_lens.models.family import Model, family_of
from kn_lens.neuron import Neuron
from kn_lens.results import ReportRow, Result, dig, report_row

#: The paper's Figure 6 (bert-base-cased, its knowledge neurons): mean activation at [MASK].
PAPER: dict[str, Any] = {
    "model": "bert-base-cased",
    "ours": {"T1": 0.485, "T2": 0.019, "T3": -0.018},
    "baseline": None,
    "note": "The paper reports that baseline neurons have similar activations on T1, T2 and T3 "
    "(they cannot tell the prompt types apart); it gives no baseline numbers in the text.",
}


# ----------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------


@dataclass
class FactActivation:
    """One fact's mean knowledge-neuron activation at [MASK] per prompt type.

    Attributes:
        key: bag key ``"{relation}/{index}"``.
        relation, subject, object: the fact.
        n_prompts: number of prompts per type ``{"T1": n, "T2": n, "T3": n}``.
        n_neurons: number of our knowledge neurons of the fact.
        ours: ``{type: mean activation}`` over the type's prompts and our neurons.
        n_baseline_neurons: number of baseline neurons (0 when none were given for the fact).
        baseline: the same for the baseline neurons, ``None`` where the fact has none.
    """

    key: str
    relation: str
    subject: str
    object: str
    n_prompts: dict[str, int]
    n_neurons: int
    ours: dict[str, float]
    n_baseline_neurons: int = 0
    baseline: dict[str, float] | None = None


@dataclass
class TypeMeans:
    """Means over facts, per prompt type.

    Attributes:
        n_facts: facts with our neurons that were analysed.
        ours: ``{type: mean over facts}``.
        ours_sem: ``{type: standard error of that mean}`` (NaN with fewer than 2 facts).
        n_facts_baseline: facts that also had baseline neurons.
        baseline, baseline_sem: the same for the baseline neurons (``None`` if no fact had any).
    """

    n_facts: int
    ours: dict[str, float]
    ours_sem: dict[str, float]
    n_facts_baseline: int = 0
    baseline: dict[str, float] | None = None
    baseline_sem: dict[str, float] | None = None


@dataclass
class DistantResult(Result):
    """Knowledge-neuron activation on web prompts T1/T2/T3 (schema ``"distant"``).

    Attributes:
        types: the prompt types, ``("T1", "T2", "T3")``.
        overall: :class:`TypeMeans` over all analysed facts.
        per_relation: relation id -> :class:`TypeMeans`.
        facts: one :class:`FactActivation` per analysed fact.
        skipped_facts: fact key -> why it was not analysed (``"no_neurons"``,
            ``"no_web_sentences"``, ``"no_T1_prompts"``, ``"no_T2_prompts"``).
        prompt_counts: ``{type: {"built": n, reason: n_skipped, ...}}`` over the analysed facts'
            sentences (see :data:`kn_lens.data.web.SKIP_REASONS`).
        settings: seed, max_tokens, first_words used.
    """

    schema = "distant"

    types: tuple[str, ...]
    overall: TypeMeans
    per_relation: dict[str, TypeMeans]
    facts: list[FactActivation]
    skipped_facts: dict[str, str] = field(default_factory=dict)
    prompt_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, math.nan
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))


def summarize(facts: Sequence[FactActivation]) -> TypeMeans:
    """Means (and standard errors) over facts, per prompt type."""
    ours = {t: _mean_sem([f.ours[t] for f in facts]) for t in PROMPT_TYPES}
    with_base = [f for f in facts if f.baseline is not None]
    base = {
        t: _mean_sem([f.baseline[t] for f in with_base])  # type: ignore[index]
        for t in PROMPT_TYPES
    }
    return TypeMeans(
        n_facts=len(facts),
        ours={t: v[0] for t, v in ours.items()},
        ours_sem={t: v[1] for t, v in ours.items()},
        n_facts_baseline=len(with_base),
        baseline={t: v[0] for t, v in base.items()} if with_base else None,
        baseline_sem={t: v[1] for t, v in base.items()} if with_base else None,
    )


def _counts(prompts: WebPromptSet, keys: set[str]) -> dict[str, dict[str, int]]:
    sub = WebPromptSet(
        [fp for fp in prompts.facts if fp.key in keys],
        [s for s in prompts.skipped if s.key in keys],
        prompts.seed,
    )
    return sub.counts()


def distant_activation(
    model: Model,
    web_facts: Mapping[str, Sequence[WebFact]],
    neurons: Mapping[str, Sequence[Neuron]],
    *,
    baseline: Mapping[str, Sequence[Neuron]] | None = None,
    bags: Sequence[FactBag] | None = None,
    config: PaperConfig = PaperConfig(),
    prompts: WebPromptSet | None = None,
    progress: bool = False,
) -> DistantResult:
    """Mean activation of each fact's knowledge neurons at [MASK] on its T1/T2/T3 web prompts.

    Args:
        model: a ``HookedEncoder`` or ``HookedTransformer`` with its tokenizer
            (:func:`kn_lens.load_model`).
        web_facts: ``{relation: [WebFact, ...]}`` (:func:`kn_lens.data.web.load_web_facts` for
            the Bing data, :func:`kn_lens.data.web.default_web_facts` for the default world).
        neurons: bag key -> our knowledge neurons. Only these facts are analysed, in this order.
        baseline: bag key -> activation-baseline neurons (optional).
        bags: if given, checked to agree with ``web_facts`` (same subject/object at each index).
        config: seed, ``max_tokens`` (512) and ``t2_first_words`` (50) come from here.
        prompts: prebuilt prompts (default: :func:`kn_lens.data.web.build_web_prompts` with
            the seed).
        progress: show a progress bar.

    A fact is analysed when it has neurons, web sentences, at least one T1 and one T2 prompt
    (the paper skips facts without examples); the others are listed in ``skipped_facts``.
    """
    keys, skipped = select_facts(web_facts, neurons, bags=bags)
    if prompts is None:
        prompts = build_web_prompts(
            web_facts, keys=keys, seed=config.seed, first_words=config.t2_first_words
        )
    # As the model reads them: an encoder keeps the masked prompt, a decoder its text before
    # the masked word (prompts with none are dropped and counted).
    prompts = prompts.map_prompts(family_of(model).model_prompt, "no_text_before_the_word")
    by_key = prompts.by_key()
    chosen: list[FactPrompts] = []
    for key in keys:
        fp = by_key.get(key)
        if fp is None:
            skipped[key] = "no_web_sentences"
        elif not fp.t1:
            skipped[key] = "no_T1_prompts"
        elif not fp.t2:
            skipped[key] = "no_T2_prompts"
        else:
            chosen.append(fp)
    base = baseline or {}
    items = []
    for fp in chosen:
        ours_n = list(neurons[fp.key])
        base_n = list(base.get(fp.key, ()))
        items.append(([*fp.t1, *fp.t2, *fp.t3], [*ours_n, *base_n]))
    acts = grouped_activations(
        model,
        items,
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        progress=progress,
        desc="distant",
    )
    facts: list[FactActivation] = []
    for fp, a in zip(chosen, acts, strict=False):
        n_ours = len(neurons[fp.key])
        n_base = len(base.get(fp.key, ()))
        bounds, start = {}, 0
        for t in PROMPT_TYPES:
            n = len(fp.of_type(t))
            bounds[t] = (start, start + n)
            start += n

        def type_means(cols: slice, bounds: dict = bounds, a: Any = a) -> dict[str, float]:
            res = {}
            for t, (s, e) in bounds.items():
                block = a[s:e, cols]
                res[t] = float(block.mean()) if block.numel() else math.nan
            return res

        facts.append(
            FactActivation(
                key=fp.key,
                relation=fp.relation,
                subject=fp.subject,
                object=fp.object,
                n_prompts={t: e - s for t, (s, e) in bounds.items()},
                n_neurons=n_ours,
                ours=type_means(slice(0, n_ours)),
                n_baseline_neurons=n_base,
                baseline=type_means(slice(n_ours, n_ours + n_base)) if n_base else None,
            )
        )
    relations = sorted({f.relation for f in facts})
    return DistantResult(
        types=PROMPT_TYPES,
        overall=summarize(facts),
        per_relation={r: summarize([f for f in facts if f.relation == r]) for r in relations},
        facts=facts,
        skipped_facts=skipped,
        prompt_counts=_counts(prompts, {f.key for f in facts}),
        settings={
            "seed": config.seed,
            "max_tokens": config.max_tokens,
            "first_words": config.t2_first_words,
        },
    )


def report_rows(
    result: Mapping[str, Any], paper: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[ReportRow]:
    """The paper's T1/T2/T3 activations beside this run's (the report's table)."""
    return [
        report_row(
            f"mean activation on {t} ({who})", dig(paper, who, t), dig(result, "overall", who, t)
        )
        for who in ("ours", "baseline")
        for t in ("T1", "T2", "T3")
    ]


def run(inputs: AnalysisInputs) -> DistantResult:
    """The registry's ``distant``: :func:`distant_activation` with the baseline neurons of the
    facts that have ours."""
    base = {k: v for k, v in (inputs.baseline or {}).items() if k in inputs.neurons}
    return distant_activation(
        inputs.require_model(),
        inputs.require_web(),
        inputs.neurons,
        baseline=base,
        bags=inputs.bags,
        config=inputs.config,
        progress=inputs.progress,
    )


ANALYSIS = Analysis(
    "distant",
    "Activation on web prompts T1/T2/T3 (Sec. 5.2, Fig. 6)",
    run,
    PAPER,
    (plots.distant_figure,),
    report_rows,
    needs_web=True,
)
