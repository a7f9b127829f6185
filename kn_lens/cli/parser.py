"""The ``kn-lens`` argument parser. It imports nothing heavy (no torch, no TransformerLens), so
``kn-lens --help``, ``--version`` and argument errors answer at once.

Each subcommand lists only the options it uses.
"""

from __future__ import annotations

import argparse
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# The analyses (the registry's names), the attribution precisions, the executors and every
# option of the pipeline with its help text, from torch-free modules: parsing imports no torch.
from kn_lens.config import ANALYSIS_NAMES, DTYPE_NAMES, PaperConfig
from kn_lens.executors import EXECUTORS
from kn_lens.pipeline.options import (
    ANALYSIS_OPTIONS,
    COMPUTE_OPTIONS,
    DATA_OPTIONS,
    PROG,
    RECORDED_DEFAULTS,
    REPRODUCE_DEFAULT_MAX_BAGS,
    STEP_HELP,
    Option,
)
from kn_lens.store import Shard

__all__ = ["PROG", "RECORDED_DEFAULTS", "REPRODUCE_DEFAULT_MAX_BAGS", "build_parser"]
_PAPER = PaperConfig()
DEFAULT_OUT = "kn-lens-out"


def package_version() -> str:
    try:
        return version("kn-lens")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def finite_float(text: str) -> float:
    """A finite number: NaN and infinities are refused (they cannot be undone in an edit)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add(g: Any, o: Option) -> None:
    """The flag ``--name`` of pipeline option ``o``."""
    kw: dict[str, Any] = {"help": o.help, "metavar": o.metavar}
    if o.kind == "int":
        kw["type"] = positive_int
    elif o.kind == "integer":
        kw["type"] = int
    elif o.kind == "float":
        kw["type"] = finite_float
    elif o.kind == "list":
        kw["action"] = "append"
    elif o.kind == "choice":
        kw["choices"] = DTYPE_NAMES
    g.add_argument("--" + o.name.replace("_", "-"), **kw)


def _analysis_options(g: Any, name: str) -> None:
    for o in ANALYSIS_OPTIONS[name]:
        _add(g, o)


def _compute(g: Any, *, steps: bool, model: bool, executor: bool, shard: bool) -> None:
    wanted = {"steps": steps, "dtype": steps, "batch_size": model, "device": model}
    for o in COMPUTE_OPTIONS:
        if wanted.get(o.name, model if o.name == "threads" else True):
            _add(g, o)
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a kn_lens.config.PaperConfig field, e.g. --set t=0.3 "
        "(repeatable; default: the paper's values)",
    )
    if executor:
        g.add_argument(
            "--executor",
            choices=EXECUTORS,
            default="local",
            help="where attribution runs: in this process, or as Ray tasks over "
            "model-holding actors (needs kn-lens[ray]; default: local)",
        )
        g.add_argument(
            "--ray-address",
            metavar="ADDR",
            help="with --executor ray: 'auto' joins the Ray cluster of this machine, "
            "any other value is passed to ray.init (default: start a local Ray instance)",
        )
    if shard:
        g.add_argument(
            "--shard",
            type=_shard,
            default=Shard(),
            metavar="K/N",
            help="score only shard K of N (1-based): fact i of the global order when "
            "i %% N == K-1; shards write disjoint files, later steps read the "
            "union (default: 1/1, everything)",
        )


def _output(p: argparse.ArgumentParser, *, progress: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    if progress:
        g.add_argument(
            "--no-progress",
            dest="progress",
            action="store_false",
            help="hide progress bars (default: shown)",
        )
    g.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log lines (-vv for debug)"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    _debug(g, default=argparse.SUPPRESS)  # SUPPRESS: `kn-lens --debug CMD` is not undone here


_DEBUG_HELP = "show the traceback of any error, a bad input's included (default: only a bug's)"


def _debug(g: Any, default: Any = False) -> None:
    g.add_argument("--debug", action="store_true", default=default, help=_DEBUG_HELP)


_WEB = ("distant", "trigger")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The ``kn-lens`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Knowledge neurons (Dai et al., ACL 2022) in encoders (BERT masked language "
        "models) and decoders (GPT-style causal models) on TransformerLens: one "
        "command per step of the paper, or `reproduce` for all of them.",
        epilog="Run `kn-lens COMMAND --help` for the options of a command. Results go to "
        "--out DIR; see DIR/report.md.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _debug(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        help_: str,
        *,
        web: bool = False,
        steps: bool = False,
        model: bool = True,
        executor: bool = False,
        shard: bool = False,
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        g = sp.add_argument_group("model and data")
        for o in DATA_OPTIONS:
            if web or o.name != "web":
                _add(g, o)
        _compute(
            sp.add_argument_group("computation"),
            steps=steps,
            model=model,
            executor=executor,
            shard=shard,
        )
        return sp

    for name in ("attribute", *ANALYSIS_NAMES):
        sp = add(
            name,
            STEP_HELP[name],
            web=name in _WEB,
            steps=name == "attribute",
            model=name != "identify",
            executor=name == "attribute",
            shard=name == "attribute",
        )
        if name in ANALYSIS_OPTIONS:
            _analysis_options(sp.add_argument_group(name), name)
        _output(sp)
    sp = sub.add_parser(
        "plot",
        help="Redraw figures and the report from DIR/results.json alone.",
        description="Redraw DIR/figures/*.html, DIR/report.md and "
        "DIR/report.html from DIR/results.json alone.",
        formatter_class=_Formatter,
    )
    _output(sp, progress=False)
    sp = add(
        "reproduce",
        "Run every step in order (attribute, "
        + ", ".join(ANALYSIS_NAMES)
        + ") and write DIR/results.json, DIR/report.md and DIR/report.html. On the "
        f"built-in world --max-bags defaults to {REPRODUCE_DEFAULT_MAX_BAGS} per relation.",
        web=True,
        steps=True,
        executor=True,
    )
    g = sp.add_argument_group("analyses")
    g.add_argument(
        "--skip",
        metavar="STEP",
        action="append",
        default=[],
        choices=[s for s in ANALYSIS_NAMES if s != "identify"],
        help="leave out an analysis: "
        + ", ".join(s for s in ANALYSIS_NAMES if s != "identify")
        + " (repeatable; default: run all)",
    )
    for name in ANALYSIS_OPTIONS:
        _analysis_options(g, name)
    _output(sp)
    return p
