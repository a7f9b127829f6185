"""The paper's analyses: one module each, and ONE registry of them (:data:`ANALYSES`).

Each analysis module defines ``run(inputs: AnalysisInputs) -> Result``, a pure function of its
inputs (model, facts, knowledge neurons, config) that never prints and writes no file, and exports
its registry entry ``ANALYSIS``: an :class:`Analysis` (:mod:`.registry`) holding everything about
it, once: its name, title, run function, the paper's numbers, its figures and its rows of the
report's paper-vs-run table. This package only collects the entries. The name is the same
everywhere: the ``kn-lens`` command, the key in ``results.json``, the result's ``schema`` and the
prefix of its figure files. The random-neuron controls live in :mod:`.controls`.

=========  =================================================  ==========================
name       analysis (paper)                                   module
=========  =================================================  ==========================
identify   knowledge neurons and their statistics (Sec. 4)    :mod:`.identify`
modify     suppressing and amplifying them (Sec. 4.4)         :mod:`.modify`
heldout    suppression on held-out paraphrases (beyond)       :mod:`.heldout`
localize   six localisation methods compared (beyond)         :mod:`.localize`
distant    activation on web prompts T1/T2/T3 (Sec. 5.2)      :mod:`.distant`
trigger    prompts that activate them most and least          :mod:`.trigger`
update     updating facts through their value vectors (6.1)   :mod:`.update`
erase      erasing relations (Sec. 6.2)                       :mod:`.erase`
=========  =================================================  ==========================

``identify`` runs on the stored attribution scores and gives every later analysis its neurons;
the others run on the model.
"""

from __future__ import annotations

from kn_lens.experiments import (
    distant,
    erase,
    heldout,
    identify,
    localize,
    modify,
    trigger,
    update,
)
from kn_lens.experiments.registry import (
    Analysis,
    AnalysisInputs,
    DetailsFn,
    ExamplesFn,
    FigureFn,
    RowsFn,
    TableFn,
)

#: The registry, in the paper's (and the pipeline's) order.
ANALYSES: dict[str, Analysis] = {
    m.ANALYSIS.name: m.ANALYSIS
    for m in (identify, modify, heldout, localize, distant, trigger, update, erase)
}

__all__ = [
    "ANALYSES",
    "Analysis",
    "AnalysisInputs",
    "DetailsFn",
    "ExamplesFn",
    "FigureFn",
    "RowsFn",
    "TableFn",
]
