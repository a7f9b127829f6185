"""The ``kn-lens`` command line: one subcommand per step of Dai et al. (2022), and ``reproduce``.

::

    kn-lens attribute  --out runs/x          # attribution scores, one JSON line per fact (resumable)
    kn-lens neurons    --out runs/x          # knowledge neurons (ours + baseline), statistics
    kn-lens modify     --out runs/x          # suppress / amplify
    kn-lens distant    --out runs/x          # T1/T2/T3 activations
    kn-lens trigger    --out runs/x          # top / bottom activating prompts
    kn-lens edit       --out runs/x          # update facts (--lambda1 --lambda2)
    kn-lens erase      --out runs/x          # erase relations
    kn-lens plot       --out runs/x          # redraw figures and report from runs/x/results.json
    kn-lens reproduce  --out runs/x          # all of the above, in order

Layout of ``--out DIR``::

    DIR/run.json                   options of the last run (later commands reuse them by default)
    DIR/attribution/meta.json      what the scores were computed with (model, data, steps)
    DIR/attribution/P19.jsonl      one attribution record per fact, appended fact by fact
    DIR/attribution/P19.shard2of4.jsonl   ... the same, written by ``--shard 2/4``
    DIR/neurons.json               knowledge neurons per fact (ours and the baseline)
    DIR/trigger_prompts.jsonl      every fact's most and least activating web prompts
    DIR/results.json               every analysis' result + run metadata (see kn_lens.report)
    DIR/report.md, DIR/report.html the paper's numbers beside this run's, figures, examples
    DIR/figures/*.html             one self-contained file per figure (+ .png with kaleido)

Data, model and sample options (``--model``, ``--data``, ``--relations``, ``--max-bags``, ``--steps``,
``--seed`` ...) that are not given on the command line are taken from ``DIR/run.json`` when it
exists, else from the built-in defaults, so ``kn-lens attribute --data X --out D`` followed by
``kn-lens neurons --out D`` works on the same facts.

``--shard K/N`` (``attribute`` only) is 1-based: fact ``i`` of the selected facts (0-based global
order: relations in load order, facts in index order) is scored by shard ``K`` when
``i % N == K - 1``. Shards write disjoint files and can run as independent processes; the other
commands read the union.

Exit status: 0 success; 1 ``reproduce`` finished but some analyses failed (the others are
saved and reported); 2 bad arguments or input (``kn-lens: error: ...`` on stderr, no
traceback); 3 an analysis whose module is not installed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kn_lens.store import (JsonlStore, Shard, StoreError, read_union, relation_files, safe_name,
                           write_json_atomic,
                           stored_keys)

log = logging.getLogger("kn_lens.cli")

PROG = "kn-lens"
DEFAULT_OUT = "kn-lens-out"
# Facts per relation that ``reproduce`` samples on the built-in world (keeps it within minutes on
# 2 CPU cores); on PARAREL data it uses every fact unless --max-bags is given.
REPRODUCE_DEFAULT_MAX_BAGS = 20

# Options resolved as: command line > DIR/run.json > these defaults.
RECORDED_DEFAULTS: dict[str, Any] = {
    "model": "default", "data": "default", "lama": None, "patterns": None, "web": None,
    "relations": None, "max_bags": None, "steps": 20, "batch_size": 64, "seed": 0,
}
# Options whose change makes the stored attribution scores stale.
ATTRIBUTION_KEYS = ("model", "data", "lama", "patterns", "steps")

# command -> analysis name in results.json (its experiment module: kn_lens.report.ANALYSES)
ANALYSES: dict[str, str] = {
    "neurons": "identification",
    "modify": "modify",
    "distant": "distant",
    "trigger": "trigger",
    "edit": "update",
    "erase": "erase",
}
STEPS = ("attribute", "neurons", "modify", "distant", "trigger", "edit", "erase")


class CliError(ValueError):
    """A user-facing error: printed as ``kn-lens: error: ...`` with exit status 2."""


class NotAvailable(RuntimeError):
    """An analysis whose module is missing from this installation (exit status 3)."""


class StepsFailed(RuntimeError):
    """``reproduce`` finished, but some analyses failed (exit status 1)."""


# ----------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common(parser: argparse.ArgumentParser, *, shard: bool = False, web: bool = True) -> None:
    rec = " (default: %s, or the value DIR/run.json recorded)"
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", metavar="NAME|DIR",
                   help="'default' (the built-in fact-world BERT), a TransformerLens model name "
                        "such as bert-base-cased, or a local Hugging Face checkpoint folder"
                        + rec % "default")
    g.add_argument("--data", metavar="default|DIR|FILE",
                   help="'default' (the built-in fact world), a PARAREL/LAMA root holding lama/ "
                        "and pararel/patterns/ (e.g. ../shared/data), or a JSON-lines facts file "
                        "(subject, relation, object, templates per line)" + rec % "default")
    g.add_argument("--lama", metavar="DIR",
                   help="LAMA folder with relations.jsonl and TREx/ (default: DATA/lama)")
    g.add_argument("--patterns", metavar="DIR",
                   help="PARAREL patterns folder (default: DATA/pararel/patterns)")
    if web:
        g.add_argument("--web", metavar="DIR",
                       help="web-sentence folder in the paper's Bing format "
                            "(final_distant_allbags_P*_new.json); default: DATA/bing_distant for "
                            "PARAREL data, the built-in world's own sentences for --data default")
    g.add_argument("--relations", metavar="R1,R2", action="append",
                   help="only these relation ids, comma-separated or repeated" + rec % "all")
    g.add_argument("--max-bags", type=_positive_int, metavar="N",
                   help="at most N facts per relation, a seeded random sample kept in index order"
                        + rec % "all")
    g = parser.add_argument_group("computation")
    g.add_argument("--steps", type=_positive_int, metavar="M",
                   help="integrated-gradients steps" + rec % RECORDED_DEFAULTS["steps"])
    g.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="rows per forward/backward pass" + rec % RECORDED_DEFAULTS["batch_size"])
    g.add_argument("--device", metavar="DEV",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    g.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads for torch (default: 1 for the built-in model, whose small "
                        "matrices gain little from threads and lose much when the cores are "
                        "shared; torch's choice, about one per core, for other models)")
    g.add_argument("--seed", type=int, metavar="S",
                   help="random seed of sampling and of the analyses"
                        + rec % RECORDED_DEFAULTS["seed"])
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a kn_lens.config.PaperConfig field, e.g. --set t=0.3 "
                        "(repeatable; default: the paper's values)")
    if shard:
        g.add_argument("--shard", type=_shard, default=Shard(), metavar="K/N",
                       help="score only shard K of N (1-based): fact i of the global order when "
                            "i %% N == K-1; shards write disjoint files, later steps read the "
                            "union (default: 1/1, everything)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"output folder (default: {DEFAULT_OUT})")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars (default: shown)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log lines (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _trigger_options(g: Any) -> None:
    g.add_argument("--top-k", type=_positive_int, metavar="K",
                   help="trigger: prompts kept at each end (default: PaperConfig.top_k_prompts, 3)")


def _edit_options(g: Any) -> None:
    g.add_argument("--lambda1", type=_float, metavar="L1",
                   help="edit: weight of subtracting the old answer's embedding (default: 1)")
    g.add_argument("--lambda2", type=_float, metavar="L2",
                   help="edit: weight of adding the new answer's embedding (default: 8)")
    g.add_argument("--n-edits", type=_positive_int, metavar="N",
                   help="edit: facts edited per relation, a seeded sample of the facts the model "
                        "knows (default: 10)")


def _erase_options(g: Any) -> None:
    g.add_argument("--erase", metavar="R1,R2", action="append",
                   help="erase: relations to erase, comma-separated or repeated (default: the "
                        "paper's P19, P27, P106, P937 among the selected relations, or on other "
                        "data the relations with their labels -- place of birth, country of "
                        "citizenship, occupation, work location -- else every selected relation)")
    g.add_argument("--top", type=_positive_int, metavar="N",
                   help="erase: neurons zeroed per relation (default: PaperConfig.erase_top, 20)")


def build_parser() -> argparse.ArgumentParser:
    """The ``kn-lens`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Knowledge neurons in BERT (Dai et al., ACL 2022) on TransformerLens: one "
                    "command per step of the paper, or `reproduce` for all of them.",
        epilog="Run `kn-lens COMMAND --help` for the options of a command. Results go to "
               "--out DIR; see DIR/report.md.")
    from kn_lens import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, **kw: bool) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        _common(sp, **kw)
        return sp

    add("attribute", "Compute attribution scores (integrated gradients and the activation "
        "baseline) for every fact; one JSON line per fact under DIR/attribution/, resumable.",
        shard=True)
    add("neurons", "Identify and refine knowledge neurons (adaptive p per relation, ours and the "
        "baseline); statistics and the layer-distribution figure.")
    add("modify", "Suppress and amplify knowledge neurons; change of the correct answer's "
        "probability (ours vs baseline).")
    add("distant", "Activation of knowledge neurons on web prompts T1 (head and tail), T2 (head "
        "only) and T3 (random).", web=True)
    _trigger_options(add("trigger", "Top and bottom activating web prompts of knowledge "
                         "neurons (all prompts also go to DIR/trigger_prompts.jsonl)."))
    _edit_options(add("edit", "Update facts by editing the value vectors of their knowledge "
                      "neurons (and random neurons, as the control)."))
    _erase_options(add("erase", "Erase relations by zeroing the value vectors of their most "
                       "frequent knowledge neurons (and random neurons, as the control)."))
    sp = sub.add_parser("plot", help="Redraw figures and the report from DIR/results.json alone.",
                        description="Redraw DIR/figures/*.html, DIR/report.md and "
                                    "DIR/report.html from DIR/results.json alone.",
                        formatter_class=_Formatter)
    sp.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                    help=f"output folder holding results.json (default: {DEFAULT_OUT})")
    sp.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    sp.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sp = add("reproduce", "Run every step in order (attribute, neurons, modify, distant, trigger, "
             "edit, erase) and write DIR/results.json, DIR/report.md and DIR/report.html. On the "
             f"built-in world --max-bags defaults to {REPRODUCE_DEFAULT_MAX_BAGS} per relation.")
    g = sp.add_argument_group("analyses")
    g.add_argument("--skip", metavar="STEP", action="append", default=[],
                   choices=[s for s in STEPS if s not in ("attribute", "neurons")],
                   help="leave out an analysis: modify, distant, trigger, edit or erase "
                        "(repeatable; default: run all)")
    _trigger_options(g)
    _edit_options(g)
    _erase_options(g)
    return p


# ----------------------------------------------------------------------------------------------
# Run context: resolved options, lazily loaded model and facts, results.json
# ----------------------------------------------------------------------------------------------

def _split_list(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def _coerce(field_type: Any, default: Any, text: str, key: str) -> Any:
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
            return float(text)
        if isinstance(default, tuple):
            return tuple(type(default[0])(x) for x in text.split(","))
        if isinstance(default, str):
            return text
        return json.loads(text)
    except ValueError:
        raise CliError(f"--set {key}={text}: cannot read {text!r} as {type(default).__name__}"
                       ) from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["t=0.3", "erase_top=10"]`` -> typed PaperConfig changes; unknown keys are errors."""
    from kn_lens.config import PaperConfig

    base = PaperConfig()
    known = {f.name: f for f in fields(PaperConfig) if f.name != "extra"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            raise CliError(f"--set {item!r}: unknown PaperConfig field {key!r}; known: "
                           + ", ".join(known))
        out[key] = _coerce(known[key].type, getattr(base, key), value.strip(), key)
    return out


def versions() -> dict[str, str]:
    """Versions of kn_lens, Python and the main libraries."""
    out = {"python": platform.python_version()}
    for mod in ("kn_lens", "torch", "transformer_lens", "transformers", "plotly", "numpy"):
        try:
            out[mod] = str(importlib.import_module(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing optional library is just not reported
            continue
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (read-modify-write of results.json by shards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        yield


@dataclass
class Run:
    """One ``kn-lens`` invocation: resolved options, the output folder, model and facts."""

    args: argparse.Namespace
    out: Path
    opts: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _model: Any = None
    _bags: list[Any] | None = None
    _neurons: dict[str, dict[str, list[Any]]] | None = None
    _web: Any = None

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Run":
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {out} exists and is not a folder")
        recorded = {}
        run_json = out / "run.json"
        if run_json.is_file():
            try:
                recorded = json.loads(run_json.read_text()).get("options", {})
            except (json.JSONDecodeError, AttributeError):
                log.warning("%s is unreadable; ignoring it", run_json)
        opts: dict[str, Any] = {}
        for key, default in RECORDED_DEFAULTS.items():
            given = getattr(args, key, None)
            if key == "relations":
                given = _split_list(given)
            opts[key] = given if given is not None else recorded.get(key, default)
        if args.command == "reproduce" and getattr(args, "max_bags", None) is None \
                and opts["data"] == "default" and "max_bags" not in recorded:
            opts["max_bags"] = REPRODUCE_DEFAULT_MAX_BAGS
        opts["device"] = getattr(args, "device", None)
        threads = getattr(args, "threads", None)
        on_cpu = str(opts["device"] or "cpu") == "cpu"
        if threads is None and opts["model"] == "default" and on_cpu:
            threads = 1
        if threads:
            import torch

            if torch.get_num_threads() != threads:
                log.info("using %d CPU thread(s) (--threads)", threads)
                torch.set_num_threads(int(threads))
        overrides = parse_overrides(getattr(args, "overrides", []))
        run = cls(args, out, opts, overrides)
        run._check_paths()
        return run

    def _check_paths(self) -> None:
        o = self.opts
        data = o["data"]
        if data != "default" and not Path(data).expanduser().exists() and not (
                o["lama"] and o["patterns"]):
            raise CliError(f"--data {data}: no such file or folder (give 'default', a PARAREL/"
                           "LAMA root holding lama/ and pararel/patterns/, or a facts .jsonl file)")
        for key in ("lama", "patterns", "web"):
            if o[key] and not Path(o[key]).expanduser().is_dir():
                raise CliError(f"--{key} {o[key]}: no such folder")
        m = o["model"]
        if m != "default" and (m.startswith((".", "/", "~")) or os.sep in m and not
                               m.count("/") == 1) and not Path(m).expanduser().is_dir():
            raise CliError(f"--model {m}: no such folder")

    # ---- config ------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        from kn_lens.config import PaperConfig

        changes = {"steps": int(self.opts["steps"]), "batch_size": int(self.opts["batch_size"]),
                   "seed": int(self.opts["seed"]), **self.overrides}
        for key in ("lambda1", "lambda2"):
            if getattr(self.args, key, None) is not None:
                changes[key] = float(getattr(self.args, key))
        if getattr(self.args, "top_k", None) is not None:
            changes["top_k_prompts"] = int(self.args.top_k)
        if getattr(self.args, "top", None) is not None:
            changes["erase_top"] = int(self.args.top)
        return PaperConfig().with_(**changes)

    @property
    def progress(self) -> bool:
        return bool(getattr(self.args, "progress", True))

    # ---- model and facts ---------------------------------------------------------------------
    @property
    def model(self) -> Any:
        if self._model is None:
            from kn_lens.model import load_model

            t0 = time.perf_counter()
            log.info("loading model %s", self.opts["model"])
            self._model = load_model(self.opts["model"], device=self.opts["device"])
            cfg = self._model.cfg
            log.info("model %s: %d layers, d_mlp %d, on %s (%.1fs)", self.opts["model"],
                     cfg.n_layers, cfg.d_mlp, cfg.device, time.perf_counter() - t0)
        return self._model

    def data_description(self) -> dict[str, Any]:
        o = self.opts
        return {k: o[k] for k in ("data", "lama", "patterns", "web", "relations", "max_bags")}

    def _load_all_bags(self) -> list[Any]:
        from kn_lens import data as kd

        o = self.opts
        rels = o["relations"]
        src = o["data"]
        lama, patterns = o["lama"], o["patterns"]
        if src == "default" and bool(lama) != bool(patterns):
            raise CliError("give both --lama DIR and --patterns DIR, or --data DIR holding "
                           "lama/ and pararel/patterns/")
        if src == "default" and not (lama and patterns):
            bags = kd.default_facts()
            kind = "the built-in fact world"
        elif src != "default" and Path(src).expanduser().is_file():
            bags = kd.load_jsonl_facts(Path(src).expanduser())
            kind = str(src)
        else:
            root = Path(src).expanduser() if src != "default" else None
            lama = Path(lama).expanduser() if lama else root / "lama"  # type: ignore[operator]
            patterns = (Path(patterns).expanduser() if patterns
                        else root / "pararel" / "patterns")  # type: ignore[operator]
            for d, opt in ((lama, "--lama"), (patterns, "--patterns")):
                if not d.is_dir():
                    raise CliError(f"data folder not found: {d} (give {opt} DIR, or --data DIR "
                                   "with lama/ and pararel/patterns/ inside)")
            return kd.load_pararel(lama, patterns, relations=rels)
        if rels is not None:
            have = list(dict.fromkeys(b.relation for b in bags))
            unknown = [r for r in rels if r not in have]
            if unknown:
                raise CliError(f"unknown relation(s) {', '.join(unknown)} in {kind}; available: "
                               + ", ".join(have))
            bags = [b for b in bags if b.relation in set(rels)]
        return bags

    @property
    def bags(self) -> list[Any]:
        """The selected facts in global order (relations in load order, bags by index)."""
        if self._bags is None:
            from kn_lens.data import sample_bags
            from kn_lens.prompts import filter_single_token

            bags = self._load_all_bags()
            check = filter_single_token(bags, self.model.tokenizer)
            if check.n_skipped:
                log.info("skipped %d of %d facts whose answer is not one vocabulary token",
                         check.n_skipped, len(bags))
            bags = sample_bags(check.kept, self.opts["max_bags"], int(self.opts["seed"]))
            if not bags:
                raise CliError("no facts left to analyse (check --data, --relations and that "
                               "answers are single tokens of the model's vocabulary)")
            self._bags = bags
            self.record_options()  # only options that selected facts are reused later
            rels = list(dict.fromkeys(b.relation for b in bags))
            log.info("%d facts from %d relation(s): %s", len(bags), len(rels),
                     ", ".join(rels) if len(rels) <= 12 else ", ".join(rels[:12]) + ", ...")
        return self._bags

    @property
    def relations(self) -> list[str]:
        return list(dict.fromkeys(b.relation for b in self.bags))

    # ---- recorded options --------------------------------------------------------------------
    def record_options(self) -> None:
        write_json_atomic(self.out / "run.json", {
            "options": {k: self.opts[k] for k in RECORDED_DEFAULTS},
            "command": self.args.command, "argv": getattr(self.args, "argv", None),
            "updated": _now()})

    # ---- results.json ------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        model_info: dict[str, Any] = {"name": self.opts["model"]}
        if self._model is not None:
            c = self._model.cfg
            model_info.update(n_layers=c.n_layers, d_model=c.d_model, d_mlp=c.d_mlp,
                              d_vocab=c.d_vocab, n_params=int(sum(
                                  p.numel() for p in self._model.parameters())))
        data_info = self.data_description()
        if self._bags is not None:
            data_info["n_facts"] = len(self._bags)
            data_info["n_relations"] = len(self.relations)
            data_info["facts_per_relation"] = {
                r: sum(b.relation == r for b in self._bags) for r in self.relations}
            data_info["relation_labels"] = {b.relation: b.relation_label for b in self._bags}
        return {"model": model_info, "data": data_info, "config": self.config.to_dict(),
                "versions": versions(), "command": " ".join(
                    [PROG, *(getattr(self.args, "argv", None) or [self.args.command])]),
                "device": str(self._model.cfg.device) if self._model is not None else None}

    def save_result(self, name: str, result: Any, seconds: float, paper: Any = None,
                    cpu_seconds: float | None = None) -> Path:
        """Merge one analysis' result into DIR/results.json (under a lock: shards may race)."""
        from kn_lens.results import to_jsonable

        path = self.out / "results.json"
        with _locked(self.out / ".results.lock"):
            doc = load_results(path) if path.is_file() else new_results_doc()
            meta = doc["meta"]
            new_meta = self.meta()
            meta.update({k: v for k, v in new_meta.items() if k != "model" or
                         len(v) > len(meta.get("model", {}))})
            meta.setdefault("created", _now())
            meta["updated"] = _now()
            meta.setdefault("timings", {})[name] = round(float(seconds), 3)
            if cpu_seconds is not None:
                meta.setdefault("cpu_seconds", {})[name] = round(float(cpu_seconds), 3)
            if result is not None:
                d = result.to_dict() if hasattr(result, "to_dict") else to_jsonable(result)
                doc["results"][name] = d
            if paper is not None:
                doc["paper"][name] = to_jsonable(paper)
            write_json_atomic(path, doc)
        log.info("wrote %s to %s", name, path)
        return path

    # ---- neurons ---------------------------------------------------------------------------
    def neurons(self, which: str = "ours") -> dict[str, list[Any]]:
        """Knowledge neurons by bag key from DIR/neurons.json (``"ours"`` or ``"baseline"``)."""
        if self._neurons is None:
            self._neurons = load_neurons(self.out / "neurons.json")
        return self._neurons.get(which, {})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_results_doc() -> dict[str, Any]:
    from kn_lens.report import RESULTS_SCHEMA, RESULTS_SCHEMA_VERSION

    return {"schema": RESULTS_SCHEMA, "schema_version": RESULTS_SCHEMA_VERSION,
            "meta": {"created": _now()}, "results": {}, "paper": {}}


def load_results(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CliError(f"{path} is not valid JSON ({e.msg}); remove it to start afresh") from None
    if not isinstance(doc, dict) or "results" not in doc:
        raise CliError(f"{path} is not a kn-lens results file")
    doc.setdefault("paper", {})
    doc.setdefault("meta", {})
    return doc


# ----------------------------------------------------------------------------------------------
# Neurons file
# ----------------------------------------------------------------------------------------------

NEURONS_SCHEMA = "kn_lens.knowledge_neurons"


def save_neurons(path: Path, neurons: dict[str, dict[str, Any]], relations: dict[str, Any]
                 ) -> None:
    """Write DIR/neurons.json::

        {"schema": "kn_lens.knowledge_neurons", "schema_version": 1,
         "neurons": {"ours": {bag key: [[layer, index], ...]}, "baseline": {...}},
         "relations": {relation: {"ours": {"p": ..., "rounds": ..., "converged": ...}, ...}}}
    """
    from kn_lens.results import to_jsonable

    write_json_atomic(path, {"schema": NEURONS_SCHEMA, "schema_version": 1,
                             "neurons": to_jsonable(neurons), "relations": to_jsonable(relations)})


def load_neurons(path: Path) -> dict[str, dict[str, list[Any]]]:
    """``{"ours" | "baseline": {bag key: [Neuron, ...]}}`` from DIR/neurons.json."""
    from kn_lens.neuron import Neuron

    if not path.is_file():
        raise CliError(f"{path} not found: run `kn-lens neurons --out {path.parent}` first")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CliError(f"{path} is not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or doc.get("schema") != NEURONS_SCHEMA:
        raise CliError(f"{path} is not a kn-lens neurons file")
    return {m: {k: [Neuron(int(n[0]), int(n[1])) for n in v] for k, v in by_key.items()}
            for m, by_key in doc["neurons"].items()}


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------

def _module(name: str, command: str) -> Any:
    """``kn_lens.<name>``, or :class:`NotAvailable` naming the command."""
    try:
        return importlib.import_module(f"kn_lens.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("kn_lens"):
            raise NotAvailable(f"`{command}` is not available in this installation: module "
                               f"{e.name} is missing") from None
        raise


def _attr(mod: Any, name: str, command: str) -> Any:
    fn = getattr(mod, name, None)
    if fn is None:
        raise NotAvailable(f"`{command}` is not available in this installation: "
                           f"{mod.__name__}.{name} is missing")
    return fn


def attribution_dir(out: Path) -> Path:
    return out / "attribution"


def _check_attribution_meta(run: Run, *, write: bool = True,
                            keys: Sequence[str] = ATTRIBUTION_KEYS) -> None:
    """Refuse to mix (or read) scores computed with another model, data or number of steps."""
    path = attribution_dir(run.out) / "meta.json"
    mine = {k: run.opts[k] for k in ATTRIBUTION_KEYS}
    if path.is_file():
        try:
            theirs = json.loads(path.read_text()).get("options", {})
        except (json.JSONDecodeError, AttributeError):
            raise CliError(f"{path} is unreadable; remove it if the scores are right") from None
        diff = [k for k in keys if k in theirs and theirs[k] != mine[k]]
        if diff:
            raise CliError(
                f"{path.parent} holds scores computed with "
                + ", ".join(f"--{k.replace('_', '-')} {theirs[k]}" for k in diff)
                + "; use the same options or another --out")
    elif write:
        write_json_atomic(path, {"options": mine, "created": _now()})


def default_score_fn(model: Any, bag: Any, config: Any) -> dict[str, Any]:
    """The attribution record of one bag: ``kn_lens.knowledge_neurons.score_bag(...).to_dict()``."""
    neurons = _module("knowledge_neurons", "attribute")
    scores = _attr(neurons, "score_bag", "attribute")(model, bag, config=config)
    d = scores.to_dict()
    d.setdefault("key", bag.key)
    return d


# Tests may swap this for a cheap stand-in.
SCORE_FN: Callable[[Any, Any, Any], dict[str, Any]] = default_score_fn


def step_attribute(run: Run) -> dict[str, Any]:
    """Score every selected fact of this shard, appending one JSON line per fact; resumable."""
    from tqdm.auto import tqdm

    shard: Shard = getattr(run.args, "shard", Shard())
    _check_attribution_meta(run, write=False)
    mine = shard.select(run.bags)
    _check_attribution_meta(run)
    adir = attribution_dir(run.out)
    by_rel: dict[str, list[Any]] = {}
    for b in mine:
        by_rel.setdefault(b.relation, []).append(b)
    stores: dict[str, JsonlStore] = {}
    todo: list[Any] = []
    try:
        for rel, bags in by_rel.items():
            path = adir / f"{safe_name(rel)}{shard.suffix}.jsonl"
            others = [p for p in relation_files(adir, rel) if p != path]
            st = JsonlStore(path, done=stored_keys(others)).open()
            stores[rel] = st
            pending = [b for b in bags if b.key not in st]
            todo.extend(pending)
            log.info("%s: %d fact(s) to score, %d already stored -> %s", rel, len(pending),
                     len(bags) - len(pending), path)
        config = run.config
        model = run.model if todo else None
        bar = tqdm(total=len(todo), unit="fact", desc=f"attribute {shard}", dynamic_ncols=True,
                   disable=not run.progress or not todo, file=sys.stderr)
        with bar:
            for bag in todo:
                rec = SCORE_FN(model, bag, config)
                if rec.get("key") != bag.key:
                    raise RuntimeError(f"scorer returned key {rec.get('key')!r} for {bag.key}")
                stores[bag.relation].append(rec)
                bar.update(1)
    finally:
        for st in stores.values():
            st.close()
    log.info("attribution: %d fact(s) scored now; all %d fact(s) of shard %s stored in %s",
             len(todo), len(mine), shard, adir)
    return {"n_scored": len(todo), "n_facts": len(mine), "shard": str(shard)}


def read_scores(run: Run) -> dict[str, list[dict[str, Any]]]:
    """Stored attribution records of the selected facts, by relation (union of all shards)."""
    _check_attribution_meta(run, write=False, keys=[k for k in ATTRIBUTION_KEYS if k != "steps"])
    adir = attribution_dir(run.out)
    out: dict[str, list[dict[str, Any]]] = {}
    missing: dict[str, int] = {}
    for rel in run.relations:
        recs = read_union(relation_files(adir, rel))
        keys = [b.key for b in run.bags if b.relation == rel]
        out[rel] = [recs[k] for k in keys if k in recs]
        if len(out[rel]) < len(keys):
            missing[rel] = len(keys) - len(out[rel])
    if not any(out.values()):
        raise CliError(f"no attribution scores in {adir} for the selected facts: run "
                       f"`kn-lens attribute --out {run.out}` first")
    if missing:
        log.warning("facts without attribution scores (not yet run, or another shard still "
                    "running): %s", ", ".join(f"{r}: {n}" for r, n in missing.items()))
    return out


def step_neurons(run: Run) -> Any:
    """Adaptive-p neurons per relation (ours = IG, baseline = activation) and their statistics,
    from the stored attribution scores (no gradients); writes DIR/neurons.json."""
    nmod = _module("knowledge_neurons", "neurons")
    ident = _module("experiments.identification", "neurons")
    BagScores = _attr(nmod, "BagScores", "neurons")
    scores = [BagScores.from_dict(r) for recs in read_scores(run).values() for r in recs]
    result = _attr(ident, "identification_from_scores", "neurons")(scores, run.config)
    rel_info = {rel: {m: {k: getattr(ms, k, None) for k in ("p", "rounds", "converged",
                                                            "neurons_per_fact")}
                      for m, ms in (("ours", st.ours), ("baseline", st.baseline)) if ms}
                for rel, st in result.relations.items()}
    save_neurons(run.out / "neurons.json", result.neurons, rel_info)
    run._neurons = None
    for rel, info in rel_info.items():
        o = info.get("ours", {})
        log.info("%s: p=%.2f after %s round(s), %.2f neurons per fact (ours)", rel,
                 o.get("p") or 0.0, o.get("rounds"), o.get("neurons_per_fact") or 0.0)
    log.info("wrote knowledge neurons to %s", run.out / "neurons.json")
    return result


def _ours(run: Run) -> dict[str, list[Any]]:
    """Our neurons of the selected facts (bag key -> neurons)."""
    keys = {b.key for b in run.bags}
    ours = {k: v for k, v in run.neurons("ours").items() if k in keys}
    if not ours:
        raise CliError(f"none of the selected facts has identified neurons in "
                       f"{run.out / 'neurons.json'}: run `kn-lens neurons` with the same options")
    return ours


def _baseline(run: Run) -> dict[str, list[Any]] | None:
    keys = {b.key for b in run.bags}
    base = run.neurons("baseline")
    return {k: v for k, v in base.items() if k in keys} if base else None


def step_modify(run: Run) -> Any:
    mod = _module("experiments.modify", "modify")
    ours = _ours(run)
    bags = [b for b in run.bags if b.key in ours]
    return _attr(mod, "modify", "modify")(
        run.model, bags, ours, _baseline(run), run.config,
        batch_size=run.config.batch_size, progress=run.progress)


def web_facts(run: Run, command: str) -> Any:
    """Web sentences for distant/trigger: --web DIR, DATA/bing_distant, or the built-in world's."""
    if run._web is not None:
        return run._web
    web = _module("data.web", command)
    o = run.opts
    folder = o["web"]
    if folder is None and o["data"] != "default" and Path(o["data"]).expanduser().is_dir():
        cand = Path(o["data"]).expanduser() / "bing_distant"
        folder = str(cand) if cand.is_dir() else None
    if folder is None:
        if o["data"] != "default" or (o["lama"] and o["patterns"]):
            raise CliError(f"`{command}` needs web sentences: give --web DIR (a folder of "
                           "final_distant_allbags_<relation>_new.json and query_pairs.json)")
        run._web = _attr(web, "default_web_facts", command)()
    else:
        folder_p = Path(folder).expanduser()
        have = sorted(p.name[len("final_distant_allbags_"):-len("_new.json")]
                      for p in folder_p.glob("final_distant_allbags_*_new.json"))
        rels = [r for r in run.relations if r in have]
        if not rels:
            raise CliError(f"no web sentences in {folder_p} for the selected relation(s) "
                           f"{', '.join(run.relations)}; it has: {', '.join(have) or 'none'}")
        run._web = _attr(web, "load_web_facts", command)(folder_p, relations=rels)
        log.info("web sentences of %s from %s", ", ".join(rels), folder_p)
    return run._web


def _with_web(run: Run, command: str) -> tuple[Any, list[Any], dict[str, list[Any]]]:
    wf = web_facts(run, command)
    ours = _ours(run)
    bags = [b for b in run.bags if b.key in ours and b.relation in wf]
    if not bags:
        raise CliError(f"`{command}`: none of the selected facts with neurons has web sentences")
    keys = {b.key for b in bags}
    return wf, bags, {k: v for k, v in ours.items() if k in keys}


def step_distant(run: Run) -> Any:
    mod = _module("experiments.distant", "distant")
    wf, bags, ours = _with_web(run, "distant")
    base = _baseline(run)
    return _attr(mod, "distant_activation", "distant")(
        run.model, wf, ours, baseline={k: v for k, v in (base or {}).items() if k in ours},
        bags=bags, config=run.config, batch_size=run.config.batch_size, progress=run.progress)


def step_trigger(run: Run) -> Any:
    mod = _module("experiments.trigger", "trigger")
    wf, bags, ours = _with_web(run, "trigger")
    result = _attr(mod, "activating_prompts", "trigger")(
        run.model, wf, ours, bags=bags, config=run.config, batch_size=run.config.batch_size,
        progress=run.progress)
    writer = getattr(mod, "write_trigger_jsonl", None)
    if writer is not None:
        path = writer(result, run.out / "trigger_prompts.jsonl")
        log.info("wrote the activating prompts of every fact to %s", path)
    return result


def step_edit(run: Run) -> Any:
    mod = _module("experiments.update", "edit")
    n = getattr(run.args, "n_edits", None)
    kw = {"facts_per_relation": n} if n else {}
    return _attr(mod, "update_experiment", "edit")(
        run.model, run.bags, run.neurons("ours"), run.config,
        batch_size=run.config.batch_size, progress=run.progress, **kw)


#: Labels of the relations the paper erases (P19, P27, P106, P937), to pick their analogues in
#: a fact world with other relation ids.
ERASE_LABELS = ("place of birth", "country of citizenship", "occupation", "work location")


def erase_relations(run: Run) -> list[str]:
    """--erase, else the paper's erased relations (by id, or by label) among the selected ones,
    else every selected relation."""
    given = _split_list(getattr(run.args, "erase", None))
    if given:
        unknown = [r for r in given if r not in run.relations]
        if unknown:
            raise CliError(f"--erase: unknown relation(s) {', '.join(unknown)}; selected: "
                           + ", ".join(run.relations))
        return given
    mod = _module("experiments.erase", "erase")
    paper = set(getattr(mod, "PAPER_RELATIONS", ()))
    labels = {b.relation: b.relation_label for b in run.bags}
    chosen = [r for r in run.relations if r in paper or labels[r] in ERASE_LABELS]
    return chosen or list(run.relations)


def step_erase(run: Run) -> Any:
    from kn_lens.data import relation_of_key

    mod = _module("experiments.erase", "erase")
    rels = erase_relations(run)
    with_neurons = {relation_of_key(k) for k, v in run.neurons("ours").items() if v}
    skipped = [r for r in rels if r not in with_neurons]
    if skipped:
        log.warning("not erasing %s: no knowledge neurons", ", ".join(skipped))
    rels = [r for r in rels if r in with_neurons]
    if not rels:
        raise CliError("no relation to erase has knowledge neurons")
    log.info("erasing %s", ", ".join(rels))
    return _attr(mod, "erase_experiment", "erase")(
        run.model, run.bags, run.neurons("ours"), rels, run.config,
        batch_size=run.config.batch_size, progress=run.progress)


STEP_FUNCS: dict[str, Callable[[Run], Any]] = {
    "neurons": step_neurons, "modify": step_modify, "distant": step_distant,
    "trigger": step_trigger, "edit": step_edit, "erase": step_erase,
}


def run_step(run: Run, command: str) -> Any:
    """Run one step, store its result in DIR/results.json and return it."""
    t0, c0 = time.perf_counter(), time.process_time()
    log.info("== %s ==", command)
    if command == "attribute":
        summary = step_attribute(run)
        seconds = time.perf_counter() - t0
        run.save_result("attribute", None, seconds, cpu_seconds=time.process_time() - c0)
        log.info("attribute done in %.1fs", seconds)
        return summary
    from kn_lens.report import ANALYSES as REPORTED

    name = ANALYSES[command]
    module = REPORTED[name][1]
    result = STEP_FUNCS[command](run)
    paper = getattr(sys.modules.get(f"kn_lens.experiments.{module}"), "PAPER", None)
    seconds = time.perf_counter() - t0
    run.timings[command] = seconds
    run.save_result(name, result, seconds, paper=paper, cpu_seconds=time.process_time() - c0)
    log.info("%s done in %.1fs", command, seconds)
    return result


def write_outputs(out: Path) -> dict[str, Any]:
    """Figures, report.md and report.html from DIR/results.json."""
    from kn_lens import report

    written = report.write_report(out)
    for kind, path in written.items():
        if kind != "figures":
            log.info("wrote %s", path)
    return written


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if not (out / "results.json").is_file():
        raise CliError(f"{out / 'results.json'} not found: run a kn-lens analysis with "
                       f"--out {out} first")
    write_outputs(out)
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    run = Run.from_args(args)
    run.out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if args.command == "reproduce":
        t0, c0 = time.perf_counter(), time.process_time()
        for step in STEPS:
            if step in getattr(args, "skip", []):
                log.info("skipping %s (--skip)", step)
                continue
            if step in ("attribute", "neurons"):  # everything else depends on these
                run_step(run, step)
                continue
            try:
                run_step(run, step)
            except (NotAvailable, CliError, ValueError) as e:
                # One analysis failing must not lose the others: report it and go on.
                log.error("%s failed: %s", step, e)
                failed.append(f"{step} ({e})")
        run.save_result("reproduce", None, time.perf_counter() - t0,
                        cpu_seconds=time.process_time() - c0)
    else:
        run_step(run, args.command)
    if args.command != "attribute":
        write_outputs(run.out)
    if failed:
        raise StepsFailed("some analyses did not run: " + "; ".join(failed)
                          + f". The others are in {run.out / 'results.json'}")
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kn-lens`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
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
        return _dispatch(args)
    finally:  # leave logging as we found it (main() may be called in-process)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def _dispatch(args: argparse.Namespace) -> int:
    try:
        from kn_lens.model import ModelLoadError

        user_errors: tuple[type[BaseException], ...] = (
            CliError, ModelLoadError, ValueError, FileNotFoundError, NotADirectoryError,
            StoreError)
    except ImportError:  # pragma: no cover
        user_errors = (CliError, ValueError, FileNotFoundError)
    try:
        if args.command == "plot":
            return cmd_plot(args)
        return cmd_step(args)
    except NotAvailable as e:
        _error(str(e))
        return 3
    except StepsFailed as e:
        _error(str(e))
        return 1
    except user_errors as e:
        _error(str(e) or type(e).__name__)
        return 2
    except KeyboardInterrupt:
        _error("interrupted; run the same command again to resume")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
