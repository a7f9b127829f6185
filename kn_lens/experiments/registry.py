"""The registry's types: what an analysis reads (:class:`AnalysisInputs`) and what it is
(:class:`Analysis`).

Every analysis module imports these and exports its own entry, ``ANALYSIS = Analysis(...)``, with
``run(inputs: AnalysisInputs) -> Result`` beside it; :mod:`kn_lens.experiments` only collects the
entries into :data:`kn_lens.experiments.ANALYSES`. This module imports no analysis, so no module
of the package imports in a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kn_lens.config import PaperConfig
from kn_lens.data.facts import FactBag
from kn_lens.data.web import WebFact
from kn_lens.errors import KnLensError
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
#: ``details(result dict) -> JSON records``: the per-fact lines the run folder writes beside
#: results.json (:meth:`kn_lens.rundir.RunDir.save_details`).
DetailsFn = Callable[[Mapping[str, Any]], Iterable[Any]]


@runtime_checkable
class FactLog(Protocol):
    """Per-fact records an analysis keeps between runs (the run folder gives one to a resumable
    analysis: :meth:`kn_lens.rundir.RunDir.fact_log`). A record is a JSON object with ``key``
    (the fact) and ``fingerprint`` (a hash of everything its numbers depend on, which the
    analysis computes); the analysis reuses a record only when both match."""

    def get(self, key: str, fingerprint: str) -> Mapping[str, Any] | None:
        """The record of fact ``key`` computed with ``fingerprint``, if one was kept."""
        ...

    def append(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (written through at once, so a kill loses no finished fact)."""
        ...


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
        relations: relations to erase (``erase``; default: its ``default_relations``).
        facts_per_relation: facts edited per relation (``update``; default 10).
        progress: show progress bars.
        fact_log: where a resumable analysis keeps each fact's record as soon as it is done
            (``None``: nothing is kept; the analysis computes every fact).
        templates: PARAREL templates (``[X]`` subject, ``[Y]`` answer) by relation id, of the
            relations an analysis asks for beyond the selected facts (``update``'s symmetry: the
            inverse relations); ``None`` when the source has none (the built-in world, a facts
            file).
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
    fact_log: FactLog | None = None
    templates: Mapping[str, Sequence[str]] | None = None

    def require_model(self) -> Model:
        """The model; :class:`~kn_lens.errors.KnLensError` when there is none."""
        if self.model is None:
            raise KnLensError("this analysis needs a model")
        return self.model

    def require_web(self) -> Mapping[str, Sequence[WebFact]]:
        """The web sentences; :class:`~kn_lens.errors.KnLensError` when there are none."""
        if self.web_facts is None:
            raise KnLensError("this analysis needs web sentences")
        return self.web_facts


@dataclass(frozen=True)
class Analysis:
    """One analysis of the paper, everything about it in one place.

    Attributes:
        name: the name everywhere: the ``kn-lens`` step, the results.json key, the result's
            ``schema`` and the figure file stem.
        title: the report's heading.
        run: ``run(inputs) -> Result``, a pure function (it writes no file and never prints).
        paper: the paper's numbers (stored in results.json under ``paper``).
        figures: the figure functions.
        rows: the report's paper-vs-run rows.
        needs_web: reads ``AnalysisInputs.web_facts``.
        needs_scores: reads the stored attribution scores (``AnalysisInputs.scores``).
        needs_templates: the PARAREL templates of these relations beyond the selected facts'
            (``AnalysisInputs.templates``), given the selected relations.
        details: the per-fact records the run folder writes beside results.json, if any.
        examples: a few facts of the result as display lines for the report, if any.
        table: the analysis' own table in the report (identify: per relation), if any.
        resumable: keeps per-fact records in ``AnalysisInputs.fact_log``: a run stopped midway
            resumes where it stopped.
    """

    name: str
    title: str
    run: Callable[[AnalysisInputs], Result]
    paper: Mapping[str, Any]
    figures: tuple[FigureFn, ...]
    rows: RowsFn
    needs_web: bool = False
    needs_scores: bool = False
    needs_templates: Callable[[Sequence[str]], Sequence[str]] | None = None
    details: DetailsFn | None = None
    examples: ExamplesFn | None = None
    table: TableFn | None = None
    resumable: bool = False


__all__ = [
    "Analysis",
    "AnalysisInputs",
    "DetailsFn",
    "ExamplesFn",
    "FactLog",
    "FigureFn",
    "RowsFn",
    "TableFn",
]
