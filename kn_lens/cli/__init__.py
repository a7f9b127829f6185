"""The ``kn-lens`` command line: one subcommand per step of Dai et al. (2022), and ``reproduce``.

::

    kn-lens attribute  --out runs/x          # attribution scores, one line per fact, resumable
    kn-lens identify   --out runs/x          # knowledge neurons (ours + baseline), statistics
    kn-lens modify     --out runs/x          # suppress / amplify
    kn-lens distant    --out runs/x          # T1/T2/T3 activations
    kn-lens trigger    --out runs/x          # top / bottom activating prompts
    kn-lens update     --out runs/x          # update facts (--lambda1 --lambda2)
    kn-lens erase      --out runs/x          # erase relations
    kn-lens plot       --out runs/x          # redraw figures and report from runs/x/results.json
    kn-lens reproduce  --out runs/x          # all of the above, in order

The analyses and their names come from the registry, :data:`kn_lens.experiments.ANALYSES`; the
files of ``--out DIR`` are named in :mod:`kn_lens.rundir`.

``--shard K/N`` (``attribute`` only) is 1-based: fact ``i`` of the selected facts (0-based global
order: relations in load order, facts in index order) is scored by shard ``K`` when
``i % N == K - 1``. Shards write disjoint files and can run as independent processes; the other
commands read the union. ``--executor ray`` runs attribution on Ray actors instead.

Exit status: 0 success; 1 ``reproduce`` finished but some analyses failed (the others are
saved and reported), or a bug in kn_lens (any exception that is not a
:class:`~kn_lens.errors.KnLensError`: its traceback, then a line asking for a report); 2 bad
arguments or input (a :class:`~kn_lens.errors.KnLensError`, or a file or folder the system refuses:
one ``kn-lens: error: ...`` line on stderr, no traceback); 130 interrupted. ``--debug`` shows the
traceback of every error.

Arguments are parsed before torch or TransformerLens is imported, so ``--help``, ``--version``
and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kn_lens.cli.parser import PROG, build_parser
from kn_lens.errors import KnLensError
from kn_lens.rundir import prepare_out, remove_if_empty

if TYPE_CHECKING:
    from kn_lens.executors import ScoreFn

log = logging.getLogger("kn_lens.cli")


class StepsFailed(RuntimeError):
    """``reproduce`` finished, but some analyses failed (exit status 1)."""


def cmd_plot(args: argparse.Namespace) -> int:
    from kn_lens.pipeline.steps import write_outputs
    from kn_lens.rundir import RunDir, RunDirError

    rundir = RunDir(args.out)
    if not rundir.results_json.is_file():
        raise RunDirError(
            f"{rundir.results_json} not found: run a kn-lens analysis with "
            f"--out {rundir.path} first"
        )
    write_outputs(rundir.path, lock=True)
    return 0


def cmd_step(args: argparse.Namespace, score: ScoreFn | None = None) -> int:
    """One step of the pipeline, or all of them (``reproduce``), on ``--out``."""
    created = prepare_out(args.out)
    out = Path(args.out).expanduser()
    debug = bool(getattr(args, "debug", False))
    failed: list[str] = []
    try:
        from kn_lens.cli.run import from_args

        pipeline = from_args(args) if score is None else from_args(args, score=score)
        if args.command == "reproduce":
            pipeline.reproduce(
                args.skip, on_failure=lambda s, e: failed.append(_step_failed(s, e, debug=debug))
            )
        else:
            pipeline.run_step(args.command)
            if args.command != "attribute":
                pipeline.write_report()
    except BaseException:
        remove_if_empty(out, created)
        raise
    if failed:
        raise StepsFailed(
            "some analyses did not run: "
            + "; ".join(failed)
            + f". The others are in {out / 'results.json'}"
        )
    return 0


def _step_failed(step: str, e: Exception, *, debug: bool) -> str:
    """Log why analysis ``step`` of ``reproduce`` failed (a bug: with its traceback) and return
    its entry in the final one-line summary."""
    if isinstance(e, KnLensError):
        log.error("%s failed: %s", step, _one_line(e), exc_info=e if debug else None)
        return f"{step} ({_one_line(e)})"
    log.error("%s failed: %s", step, _bug_line(e), exc_info=e)
    return f"{step} (a bug in kn_lens, {type(e).__name__}: {_one_line(e)}; traceback above)"


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log lines of kn_lens to stderr (INFO by default)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logger = logging.getLogger("kn_lens")
    for h in list(logger.handlers):
        if getattr(h, "_kn_lens_cli", False):
            logger.removeHandler(h)
    h = _TqdmHandler(sys.stderr)
    h._kn_lens_cli = True  # type: ignore[attr-defined]
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, score: ScoreFn | None = None) -> int:
    """Run ``kn-lens`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``score`` replaces the executor's per-fact attribution scorer
    (:func:`kn_lens.executors.score_record`), e.g. by a cheap stand-in in tests.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    args.argv = argv
    logger = logging.getLogger("kn_lens")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return _dispatch(args, score)
    finally:  # leave logging as we found it (main() may be called in-process)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def _dispatch(args: argparse.Namespace, score: ScoreFn | None) -> int:
    debug = bool(getattr(args, "debug", False))
    try:
        if args.command == "plot":
            return cmd_plot(args)
        return cmd_step(args, score)
    except StepsFailed as e:
        _error(str(e))
        return 1
    except (KnLensError, OSError) as e:  # bad input; a file or folder the system refuses
        if debug:
            traceback.print_exc()
        _error(_one_line(e))
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _error("interrupted; run the same command again to resume")
        return 130
    except Exception as e:  # noqa: BLE001 - anything else is a bug: say so, with its traceback
        traceback.print_exc()
        _error(_bug_line(e))
        return 1


def _bug_line(e: BaseException) -> str:
    return (
        f"{type(e).__name__}: {_one_line(e)} -- this is a bug in kn_lens, not in your input; "
        "please report it to the kn_lens maintainers with the command and the traceback above"
    )


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, KnLensError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
