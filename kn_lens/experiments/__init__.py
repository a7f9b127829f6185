"""The paper's analyses: one module each, and ONE registry of them (:data:`ANALYSES`).

Each analysis is a pure function of its inputs (model, facts, knowledge neurons, config) that
returns a :class:`kn_lens.results.Result` and never prints. Its :class:`Analysis` entry below holds
everything else about it, once: its name, title, run function, the paper's numbers, its figures
and its rows of the report's paper-vs-run table. The name is the same everywhere: the ``kn-lens``
command, the key in ``results.json``, the result's ``schema`` and the prefix of its figure files.

=========  =================================================  ==========================
name       analysis (paper)                                   module
=========  =================================================  ==========================
identify   knowledge neurons and their statistics (Sec. 4)    :mod:`.identify`
modify     suppressing and amplifying them (Sec. 4.4)         :mod:`.modify`
distant    activation on web prompts T1/T2/T3 (Sec. 5.2)      :mod:`.distant`
trigger    prompts that activate them most and least          :mod:`.trigger`
update     updating facts through their value vectors (6.1)   :mod:`.update`
erase      erasing relations (Sec. 6.2)                       :mod:`.erase`
=========  =================================================  ==========================

``identify`` runs on the stored attribution scores and gives every later analysis its neurons;
the others run on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kn_lens import plots
from kn_lens.config import PaperConfig
from kn_lens.data.facts import FactBag
from kn_lens.data.web import WebFact
from kn_lens.experiments import distant, erase, heldout, identify, modify, trigger, update
from kn_lens.knowledge_neurons import BagScores
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron
from kn_lens.results import ReportRow, Result

#: ``figure(result dict, paper dict) -> plotly figure``.
FigureFn = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
#: ``examples(result dict, n) -> up to n display lines`` for the report.
ExamplesFn = Callable[[Mapping[str, Any], int], list[str]]
#: ``table(result dict, results.json meta) -> (header, rows)``: the analysis' own report table.
TableFn = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[list[str], list[list[Any]]]]
#: ``rows(result dict, paper dict, results.json meta) -> paper-vs-run rows``.
RowsFn = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], list[ReportRow]]


@dataclass
class AnalysisInputs:
    """Everything an analysis may read. The command line fills in what the analysis needs.

    Attributes:
        model: the model (``None`` for ``identify``, which reads stored scores only).
        bags: the selected facts, in global order.
        neurons: our knowledge neurons by bag key (empty for ``identify``).
        baseline: the activation baseline's neurons by bag key, when identified.
        config: the hyperparameters (the paper's by default); ``config.batch_size`` bounds every
            forward pass.
        scores: the stored attribution scores (``identify``, ``heldout``).
        web_facts: web sentences by relation (``distant``, ``trigger``).
        relations: relations to erase (``erase``; default: :func:`erase.default_relations`).
        facts_per_relation: facts edited per relation (``update``; default 10).
        progress: show progress bars.
    """

    model: Model | None
    bags: Sequence[FactBag]
    neurons: Mapping[str, Sequence[Neuron]] = field(default_factory=dict)
    baseline: Mapping[str, Sequence[Neuron]] | None = None
    config: PaperConfig = field(default_factory=PaperConfig)
    scores: Sequence[BagScores] = ()
    web_facts: Mapping[str, Sequence[WebFact]] | None = None
    relations: Sequence[str] | None = None
    facts_per_relation: int | None = None
    progress: bool = False

    def require_model(self) -> Model:
        if self.model is None:
            raise ValueError("this analysis needs a model")
        return self.model

    def require_web(self) -> Mapping[str, Sequence[WebFact]]:
        if self.web_facts is None:
            raise ValueError("this analysis needs web sentences")
        return self.web_facts


@dataclass(frozen=True)
class Analysis:
    """One analysis of the paper, everything about it in one place."""

    name: str
    title: str
    run: Callable[[AnalysisInputs], Result]
    paper: Mapping[str, Any]
    figures: tuple[FigureFn, ...]
    rows: RowsFn
    needs_web: bool = False
    #: reads the stored attribution scores (``AnalysisInputs.scores``).
    needs_scores: bool = False
    #: writes the per-fact details beside results.json (``result, path -> path``), if any.
    details: Callable[[Any, Any], Any] | None = None
    #: a few facts of the result as display lines for the report, if any.
    examples: ExamplesFn | None = None
    #: the analysis' own table in the report (identify: per relation), if any.
    table: TableFn | None = None


def _identify(x: AnalysisInputs) -> Result:
    return identify.identification_from_scores(x.scores, x.config)


def _modify(x: AnalysisInputs) -> Result:
    bags = [b for b in x.bags if b.key in x.neurons]
    return modify.modify(
        x.require_model(), bags, x.neurons, x.baseline, x.config, progress=x.progress
    )


def _heldout(x: AnalysisInputs) -> Result:
    return heldout.heldout_paraphrases(
        x.require_model(), x.bags, x.scores, x.config, progress=x.progress
    )


def _distant(x: AnalysisInputs) -> Result:
    base = {k: v for k, v in (x.baseline or {}).items() if k in x.neurons}
    return distant.distant_activation(
        x.require_model(),
        x.require_web(),
        x.neurons,
        baseline=base,
        bags=x.bags,
        config=x.config,
        progress=x.progress,
    )


def _trigger(x: AnalysisInputs) -> Result:
    return trigger.activating_prompts(
        x.require_model(),
        x.require_web(),
        x.neurons,
        bags=x.bags,
        config=x.config,
        progress=x.progress,
    )


def _update(x: AnalysisInputs) -> Result:
    return update.update_experiment(
        x.require_model(),
        x.bags,
        x.neurons,
        x.config,
        facts_per_relation=x.facts_per_relation or update.DEFAULT_FACTS_PER_RELATION,
        progress=x.progress,
    )


def _erase(x: AnalysisInputs) -> Result:
    relations = x.relations
    if relations is None:
        have = list(dict.fromkeys(b.relation for b in x.bags))
        relations = erase.default_relations(have, {b.relation: b.relation_label for b in x.bags})
    return erase.erase_experiment(
        x.require_model(), x.bags, x.neurons, relations, x.config, progress=x.progress
    )


def _layer_figures(result: Mapping[str, Any], paper: Mapping[str, Any]) -> Any:
    return plots.layer_distribution_figure(result, paper)


#: The registry, in the paper's (and the pipeline's) order.
ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis(
            "identify",
            "Identifying knowledge neurons (Sec. 4, Fig. 3, Tab. 1)",
            _identify,
            identify.PAPER,
            (_layer_figures,),
            identify.report_rows,
            table=identify.report_table,
        ),
        Analysis(
            "modify",
            "Suppressing and amplifying knowledge neurons (Sec. 5.1, Fig. 4-5)",
            _modify,
            modify.PAPER,
            (plots.modify_figure,),
            modify.report_rows,
        ),
        Analysis(
            "heldout",
            "Held-out paraphrases (beyond the paper)",
            _heldout,
            heldout.PAPER,
            (plots.heldout_figure,),
            heldout.report_rows,
            needs_scores=True,
        ),
        Analysis(
            "distant",
            "Activation on web prompts T1/T2/T3 (Sec. 5.2, Fig. 6)",
            _distant,
            distant.PAPER,
            (plots.distant_figure,),
            distant.report_rows,
            needs_web=True,
        ),
        Analysis(
            "trigger",
            "Prompts that activate knowledge neurons (Sec. 5.2, Tab. 3)",
            _trigger,
            trigger.PAPER,
            (plots.trigger_figure,),
            trigger.report_rows,
            needs_web=True,
            details=trigger.write_trigger_jsonl,
            examples=trigger.report_examples,
        ),
        Analysis(
            "update",
            "Updating facts (Sec. 6.1, Tab. 4)",
            _update,
            update.PAPER,
            (plots.update_figure,),
            update.report_rows,
            examples=update.report_examples,
        ),
        Analysis(
            "erase",
            "Erasing relations (Sec. 6.2, Tab. 5)",
            _erase,
            erase.PAPER,
            (plots.erase_figure,),
            erase.report_rows,
        ),
    )
}

__all__ = ["ANALYSES", "Analysis", "AnalysisInputs", "ExamplesFn", "FigureFn", "RowsFn", "TableFn"]
