"""The pipeline as a library: facts -> attribution (resumable) -> knowledge neurons -> analyses,
on one run folder. The ``kn-lens`` command line, the Ray executor's runs and the studies use it::

    from kn_lens.config import Compute, PaperConfig
    from kn_lens.pipeline import Pipeline

    p = Pipeline("runs/x", model="default", data="default", max_bags=2,
                 config=PaperConfig(), compute=Compute(device="cpu", threads=1))
    p.attribute()                # resumable: a second call scores nothing
    p.identify()                 # runs/x/neurons.json
    p.run_analysis("modify")     # any name of kn_lens.experiments.ANALYSES
    p.reproduce()                # every step, then runs/x/report.md

Modules: :mod:`~kn_lens.pipeline.options` (the options, torch-free: the command line builds its
flags from them), :mod:`~kn_lens.pipeline.state` (the folder, options, model, facts, neurons) and
:mod:`~kn_lens.pipeline.steps` (:class:`Pipeline`, the steps). The run folder's files and their
fingerprints are :mod:`kn_lens.rundir`'s.

``Pipeline`` is imported on first use, so the torch-free options load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kn_lens.config import Compute, PaperConfig
from kn_lens.pipeline.options import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from kn_lens.pipeline.steps import Pipeline


def __getattr__(name: str) -> Any:
    if name == "Pipeline":  # a static import on first use: torch loads only now
        from kn_lens.pipeline.steps import Pipeline

        return Pipeline
    raise AttributeError(f"module 'kn_lens.pipeline' has no attribute {name!r}")


__all__ = ["Compute", "PaperConfig", "Pipeline", "PipelineError"]
