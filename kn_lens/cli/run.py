"""One ``kn-lens`` invocation: its resolved options, and the model, facts and neurons it works on.

Options that select facts and scores (``--model``, ``--data``, ``--relations``, ``--max-bags``,
``--steps``, ``--seed`` ...) and are not given on the command line are taken from ``DIR/run.json``
when it exists, else from the defaults, so ``kn-lens attribute --data X --out D`` followed by
``kn-lens identify --out D`` works on the same facts.

Every stored attribution record and neurons.json carry the *fingerprint* of the fact they were
computed from (:func:`fingerprint`): its subject, relation, object and exact prompts, and the model
and settings that made the scores. A stored result whose fingerprint no longer matches the fact is
never read: attribution scores it again, and later steps refuse neurons of other inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kn_lens.cli.parser import PROG, RECORDED_DEFAULTS, REPRODUCE_DEFAULT_MAX_BAGS
from kn_lens.config import PaperConfig, default_batch_size
from kn_lens.data.facts import FactBag, cap_prompts, read_keys, sample_bags, select_keys
from kn_lens.data.sources import check_source, load_facts, load_web
from kn_lens.data.web import WebFact
from kn_lens.errors import KnLensError
from kn_lens.executors import ScoreFn, score_record
from kn_lens.models import load_model
from kn_lens.models.family import Model
from kn_lens.neuron import Neuron
from kn_lens.readout import usable_bags
from kn_lens.rundir import RunDir

log = logging.getLogger("kn_lens.cli")

#: Options whose change makes the stored attribution scores stale (checked folder-wide).
ATTRIBUTION_KEYS = ("model", "data", "lama", "patterns", "steps", "dtype")


class CliError(KnLensError):
    """A user-facing error: printed as ``kn-lens: error: ...`` with exit status 2."""


def fingerprint(bag: FactBag, settings: Mapping[str, Any]) -> str:
    """A short hash of a fact (subject, relation, object, prompts) and the ``settings`` its scores
    depend on (model, steps); equal fingerprints mean a stored result may be reused."""
    doc = {
        "subject": bag.subject,
        "relation": bag.relation,
        "object": bag.object,
        "prompts": list(bag.prompts),
        "settings": dict(sorted(settings.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def split_list(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; ``None`` when empty."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


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
                raise CliError(f"--set {key}={text}: expected a finite number")
            return v
        if isinstance(default, tuple):
            return tuple(type(default[0])(x) for x in text.split(","))
        if isinstance(default, str):
            return text
        return json.loads(text)
    except ValueError as e:
        if isinstance(e, CliError):
            raise
        raise CliError(
            f"--set {key}={text}: cannot read {text!r} as {type(default).__name__}"
        ) from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["t=0.3", "erase_top=10"]`` -> typed PaperConfig changes; unknown keys are errors."""
    base = PaperConfig()
    known = [f.name for f in fields(PaperConfig) if f.name != "extra"]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            raise CliError(
                f"--set {item!r}: unknown PaperConfig field {key!r}; known: " + ", ".join(known)
            )
        out[key] = _coerce(getattr(base, key), value.strip(), key)
    return out


def versions() -> dict[str, str]:
    """Versions of kn_lens, Python and the main libraries."""
    out = {"python": platform.python_version()}
    for dist, name in (
        ("kn-lens", "kn_lens"),
        ("torch", "torch"),
        ("transformer-lens", "transformer_lens"),
        ("transformers", "transformers"),
        ("plotly", "plotly"),
        ("numpy", "numpy"),
    ):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            if name == "kn_lens":  # run from a source checkout (PYTHONPATH), not installed
                from kn_lens import __version__

                out[name] = f"{__version__} (not installed)"
    return out


@dataclass
class Run:
    """One ``kn-lens`` invocation: resolved options, the output folder, model and facts."""

    args: argparse.Namespace
    dir: RunDir
    opts: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the executor's per-fact attribution scorer (a cheaper stand-in in tests)
    score: ScoreFn = score_record
    _model: Model | None = None
    _dropped_prompts: dict[str, int] = field(default_factory=dict)
    _bags: list[FactBag] | None = None
    _neurons: dict[str, dict[str, list[Neuron]]] | None = None
    _web: Mapping[str, Sequence[WebFact]] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, score: ScoreFn = score_record) -> Run:
        rundir = RunDir(args.out)
        recorded = rundir.recorded_options()
        opts: dict[str, Any] = {}
        for key, default in RECORDED_DEFAULTS.items():
            given = getattr(args, key, None)
            if key == "relations":
                given = split_list(given)
            opts[key] = given if given is not None else recorded.get(key, default)
        if (
            args.command == "reproduce"
            and getattr(args, "max_bags", None) is None
            and opts["data"] == "default"
            and "max_bags" not in recorded
        ):
            opts["max_bags"] = REPRODUCE_DEFAULT_MAX_BAGS
        opts["device"] = getattr(args, "device", None)
        threads = getattr(args, "threads", None)
        if threads is None and opts["model"] == "default" and str(opts["device"] or "cpu") == "cpu":
            threads = 1
        opts["threads"] = threads
        if threads and getattr(args, "executor", "local") == "local":
            import torch

            if torch.get_num_threads() != threads:
                log.info("using %d CPU thread(s) (--threads)", threads)
                torch.set_num_threads(int(threads))
        run = cls(args, rundir, opts, parse_overrides(getattr(args, "overrides", [])), score)
        run.check_paths()
        return run

    def check_paths(self) -> None:
        o = self.opts
        check_source(o["data"], o["lama"], o["patterns"], o["web"])
        m = str(o["model"])
        looks_like_path = m.startswith((".", "/", "~")) or m.count("/") > 1
        from pathlib import Path

        path = Path(m).expanduser()
        is_gguf = path.suffix.lower() == ".gguf"
        if m != "default" and (looks_like_path or is_gguf):
            if is_gguf and not path.is_file():
                raise CliError(f"--model {m}: no such .gguf file")
            if not is_gguf and not path.is_dir():
                raise CliError(f"--model {m}: no such folder")

    # ---- config ----------------------------------------------------------------------------
    @property
    def config(self) -> PaperConfig:
        a = self.args
        changes: dict[str, Any] = {
            "steps": int(self.opts["steps"]),
            "batch_size": (
                default_batch_size(getattr(a, "device", "cpu"))
                if self.opts["batch_size"] is None
                else int(self.opts["batch_size"])
            ),
            "dtype": str(self.opts["dtype"]),
            "seed": int(self.opts["seed"]),
            **self.overrides,
        }
        for key, name in (
            ("lambda1", "lambda1"),
            ("lambda2", "lambda2"),
            ("top_k", "top_k_prompts"),
            ("top", "erase_top"),
        ):
            if getattr(a, key, None) is not None:
                changes[name] = getattr(a, key)
        return PaperConfig().with_(**changes)

    @property
    def progress(self) -> bool:
        return bool(getattr(self.args, "progress", True))

    @property
    def score_settings(self) -> dict[str, Any]:
        """What attribution scores depend on besides the fact (part of every fingerprint)."""
        cfg = self.config  # flags, --set and run.json alike
        settings: dict[str, Any] = {"model": str(self.opts["model"]), "steps": int(cfg.steps)}
        # Settings at the paper's value stay out, so fingerprints of earlier runs stay valid.
        for name, paper in (("dtype", "float32"), ("baseline", "zero"), ("objective", "prob")):
            if getattr(cfg, name) != paper:
                settings[name] = str(getattr(cfg, name))
        return settings

    def fingerprints(self) -> dict[str, str]:
        """The current fingerprint of each selected fact, by bag key."""
        return {b.key: fingerprint(b, self.score_settings) for b in self.bags}

    # ---- model and facts -------------------------------------------------------------------
    @property
    def model(self) -> Model:
        if self._model is None:
            t0 = time.perf_counter()
            log.info("loading model %s", self.opts["model"])
            self._model = load_model(self.opts["model"], device=self.opts["device"])
            cfg = self._model.cfg
            log.info(
                "model %s: %d layers, d_mlp %d, on %s (%.1fs)",
                self.opts["model"],
                cfg.n_layers,
                cfg.d_mlp,
                cfg.device,
                time.perf_counter() - t0,
            )
        return self._model

    @property
    def bags(self) -> list[FactBag]:
        """The selected facts in global order (relations in load order, bags by index)."""
        if self._bags is None:
            o = self.opts
            bags = load_facts(o["data"], o["lama"], o["patterns"], o["relations"])
            check = usable_bags(self.model, bags)
            check.log(len(bags), logger=log)
            self._dropped_prompts = {r: n for r, n in check.dropped_prompts.items() if n}
            bags = check.kept
            if o.get("facts"):
                bags = select_keys(bags, read_keys(o["facts"]), o["facts"])
            bags = sample_bags(bags, o["max_bags"], int(o["seed"]))
            if o.get("max_prompts"):
                bags = [cap_prompts(b, int(o["max_prompts"]), int(o["seed"])) for b in bags]
            if not bags:
                raise CliError(
                    "no facts left to analyse (check --data and --relations; an encoder needs "
                    "answers that are single tokens of its vocabulary, a decoder prompts with the "
                    "subject before the answer)"
                )
            self._bags = bags
            self.dir.record_options(
                {k: o[k] for k in RECORDED_DEFAULTS},
                self.args.command,
                getattr(self.args, "argv", None),
            )
            rels = self.relations
            log.info(
                "%d facts from %d relation(s): %s",
                len(bags),
                len(rels),
                ", ".join(rels) if len(rels) <= 12 else ", ".join(rels[:12]) + ", ...",
            )
        return self._bags

    @property
    def relations(self) -> list[str]:
        return list(dict.fromkeys(b.relation for b in self.bags))

    def web_facts(self) -> Mapping[str, Sequence[WebFact]]:
        if self._web is None:
            o = self.opts
            self._web = load_web(o["data"], o["lama"], o["patterns"], o["web"], self.relations)
        return self._web

    # ---- neurons ---------------------------------------------------------------------------
    def neurons(self, which: str = "ours") -> dict[str, list[Neuron]]:
        """Knowledge neurons of the selected facts from DIR/neurons.json (``"ours"`` or
        ``"baseline"``), only those computed from these very facts and settings."""
        if self._neurons is None:
            stored, fps = self.dir.load_neurons()
            mine = self.fingerprints()
            stale = [k for k in mine if k in fps and fps[k] != mine[k]]
            if stale:
                raise CliError(
                    f"{self.dir.neurons_json} was computed from other facts or settings for "
                    f"{len(stale)} selected fact(s) (e.g. {stale[0]}): run `kn-lens identify "
                    f"--out {self.dir.path}` again"
                )
            self._neurons = {
                m: {k: v for k, v in by_key.items() if k in mine} for m, by_key in stored.items()
            }
        return self._neurons.get(which, {})

    # ---- results.json ------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        model_info: dict[str, Any] = {"name": self.opts["model"]}
        if self._model is not None:
            c = self._model.cfg
            model_info.update(
                n_layers=c.n_layers,
                d_model=c.d_model,
                d_mlp=c.d_mlp,
                d_vocab=c.d_vocab,
                n_params=int(sum(p.numel() for p in self._model.parameters())),
            )
        o = self.opts
        data_info: dict[str, Any] = {
            k: o[k]
            for k in (
                "data",
                "lama",
                "patterns",
                "web",
                "relations",
                "max_bags",
                "facts",
                "max_prompts",
            )
        }
        if self._bags is not None:
            data_info.update(
                n_facts=len(self._bags),
                n_relations=len(self.relations),
                facts_per_relation={
                    r: sum(b.relation == r for b in self._bags) for r in self.relations
                },
                relation_labels={b.relation: b.relation_label for b in self._bags},
                dropped_prompts=self._dropped_prompts,
            )
        return {
            "model": model_info,
            "data": data_info,
            "config": self.config.to_dict(),
            "versions": versions(),
            "command": " ".join([PROG, *(getattr(self.args, "argv", None) or [self.args.command])]),
            "device": str(self._model.cfg.device) if self._model is not None else None,
        }

    def save(self, name: str, result: Any, seconds: float, cpu_seconds: float) -> None:
        self.dir.save_result(name, result, seconds, meta=self.meta, cpu_seconds=cpu_seconds)
