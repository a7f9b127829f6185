"""From parsed ``kn-lens`` arguments to a :class:`~kn_lens.pipeline.Pipeline`: options not given
on the command line are the pipeline's to resolve (``DIR/run.json``, else the defaults), so
``kn-lens attribute --data X --out D`` followed by ``kn-lens identify --out D`` works on the same
facts. ``--set KEY=VALUE`` changes a :class:`~kn_lens.config.PaperConfig` field.
"""

from __future__ import annotations

import argparse

from kn_lens.config import Compute, PaperConfig
from kn_lens.executors import ScoreFn, score_record
from kn_lens.pipeline.options import ANALYSIS_OPTIONS, DATA_OPTIONS, PipelineError, parse_overrides
from kn_lens.pipeline.steps import Pipeline

#: A user-facing error: printed as ``kn-lens: error: ...`` with exit status 2.
CliError = PipelineError


def from_args(args: argparse.Namespace, *, score: ScoreFn = score_record) -> Pipeline:
    """The pipeline ``args`` describe (``score``: the executors' per-fact scorer)."""
    config = PaperConfig().with_(**parse_overrides(getattr(args, "overrides", [])))
    flags = {o.name: o.field for opts in ANALYSIS_OPTIONS.values() for o in opts if o.field}
    given = {f: getattr(args, k) for k, f in flags.items() if getattr(args, k, None) is not None}
    config = config.with_(**given)
    get = lambda key: getattr(args, key, None)  # noqa: E731 - options a subcommand lacks are None
    return Pipeline(
        args.out,
        **{o.name: get(o.name) for o in DATA_OPTIONS},
        steps=get("steps"),
        seed=get("seed"),
        config=config,
        compute=Compute(get("device"), get("batch_size"), get("dtype"), get("threads")),
        executor=getattr(args, "executor", "local"),
        ray_address=get("ray_address"),
        score=score,
        progress=bool(getattr(args, "progress", True)),
        shard=get("shard"),
        erase=get("erase"),
        n_edits=get("n_edits"),
        command=args.command,
        argv=get("argv"),
        reproduce=args.command == "reproduce",
    )
