"""What a run works on: its folder, its resolved options, config and compute settings, the model,
the facts and the stored neurons (:class:`RunState`, the base of
:class:`~kn_lens.pipeline.Pipeline`, which adds the steps)."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from kn_lens.config import Compute, PaperConfig
from kn_lens.coverage import selection_id
from kn_lens.data.facts import BagCheck, FactBag, cap_prompts, read_keys, sample_bags, select_keys
from kn_lens.data.sources import check_source, load_facts, load_templates, load_web
from kn_lens.data.web import WebFact
from kn_lens.executors import Executor, ScoreFn, score_record
from kn_lens.folder_lock import folder_lock
from kn_lens.models import load_model, usable_bags_of
from kn_lens.models.family import Model
from kn_lens.models.files import model_digest
from kn_lens.neuron import Neuron
from kn_lens.pipeline.options import (
    PROG,
    RECORDED_DEFAULTS,
    PipelineError,
    check_recorded,
    resolve_options,
    split_list,
)
from kn_lens.readout import FactKnowledge, known_facts, known_rule
from kn_lens.rundir import RunDir, fingerprint, now, score_settings
from kn_lens.store import Shard

log = logging.getLogger("kn_lens.pipeline")


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


class RunState:
    """A run folder and what the run works on. Options left at None are taken from
    ``out/run.json`` when an earlier run recorded them, else from their defaults
    (:data:`~kn_lens.pipeline.options.RECORDED_DEFAULTS`), so a second run on the same folder
    works on the same facts.

    Args:
        out: the run folder (created on first write).
        model: ``"default"``, a TransformerLens name, a Hugging Face folder, a ``.gguf`` file,
            ``"smollm2-135m"``.
        data: ``"default"`` (the built-in world), a PARAREL/LAMA root, or a JSON-lines facts file.
        lama, patterns, web, relations, max_bags, facts, max_prompts: which facts
            (:data:`~kn_lens.pipeline.options.DATA_OPTIONS` says what each does).
        steps, seed: integrated-gradients steps; the seed of sampling and of the analyses.
        config: the method's settings (default: the paper's); a field changed from
            PaperConfig's default wins over ``steps`` / ``seed`` and over ``compute`` (its
            ``steps``, ``seed``, ``dtype`` and ``batch_size`` count as given when those are not).
        compute: device, batch size, dtype and threads (:class:`~kn_lens.config.Compute`).
        executor: ``"local"``, ``"ray"``, or an :class:`~kn_lens.executors.Executor`.
        ray_address: with ``executor="ray"``: None starts a local Ray, ``"auto"`` joins one.
        score: the executors' per-fact scorer (a cheap stand-in in tests).
        progress: show progress bars.
        shard: attribute only this shard of the facts (``Shard(k, n)`` or ``"k/n"``).
        erase, n_edits: the relations ``erase`` erases (default: its own choice); the facts
            per relation ``update`` edits (default: 10).
        command, argv: what run.json and results.json record as the command.
        reproduce: resolve options as ``reproduce`` does (a sample of the built-in world).
    """

    def __init__(
        self,
        out: str | Path,
        model: str | None = None,
        data: str | None = None,
        *,
        lama: str | None = None,
        patterns: str | None = None,
        web: str | None = None,
        relations: str | Sequence[str] | None = None,
        max_bags: int | None = None,
        facts: str | None = None,
        max_prompts: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        config: PaperConfig | None = None,
        compute: Compute | None = None,
        executor: str | Executor = "local",
        ray_address: str | None = None,
        score: ScoreFn = score_record,
        progress: bool = True,
        shard: Shard | str | None = None,
        erase: str | Sequence[str] | None = None,
        n_edits: int | None = None,
        command: str = "pipeline",
        argv: Sequence[str] | None = None,
        reproduce: bool = False,
    ) -> None:
        self.dir = RunDir(out)
        self.started = now()  # results.json's "created" when this run creates it
        compute, paper = compute or Compute(), PaperConfig()
        if config is not None:  # a setting changed in config counts as given where not given
            steps = config.steps if steps is None and config.steps != paper.steps else steps
            seed = config.seed if seed is None and config.seed != paper.seed else seed
            if compute.dtype is None and config.dtype != paper.dtype:
                compute = replace(compute, dtype=config.dtype)
            if compute.batch_size is None and config.batch_size != paper.batch_size:
                compute = replace(compute, batch_size=config.batch_size)
        given = {
            "model": model,
            "data": data,
            "lama": lama,
            "patterns": patterns,
            "web": web,
            "relations": relations,
            "max_bags": max_bags,
            "facts": facts,
            "max_prompts": max_prompts,
            "steps": steps,
            "seed": seed,
            "dtype": compute.dtype,
            "batch_size": compute.batch_size,
        }
        recorded = check_recorded(self.dir.recorded_options(), str(self.dir.run_json))
        opts = resolve_options(given, recorded, reproduce=reproduce)
        threads = compute.threads
        if threads is None and opts["model"] == "default" and str(compute.device or "cpu") == "cpu":
            threads = 1
        opts["device"], opts["threads"] = compute.device, threads
        self.opts = opts
        self.compute = Compute(compute.device, opts["batch_size"], opts["dtype"], threads)
        self.base_config = config or PaperConfig()
        self.executor, self.ray_address, self.score = executor, ray_address, score
        self.progress, self.command = progress, command
        self.shard = Shard.parse(shard) if isinstance(shard, str) else shard or Shard()
        self.erase, self.n_edits = split_list(erase), n_edits
        self.argv = list(argv) if argv is not None else None
        self._model: Model | None = None
        self._dropped_prompts: dict[str, int] = {}
        self._bags: list[FactBag] | None = None
        self._known: dict[str, FactKnowledge] | None = None
        self._neurons: dict[str, dict[str, list[Neuron]]] | None = None
        self._web: Mapping[str, Sequence[WebFact]] | None = None
        self._weights: str | None = None
        self._lock_depth = 0
        if threads and executor == "local":
            import torch

            if torch.get_num_threads() != threads:
                log.info("using %d CPU thread(s) (--threads)", threads)
                torch.set_num_threads(int(threads))
        self.check_paths()

    @contextlib.contextmanager
    def locked(self, step: str) -> Iterator[None]:
        """Hold the run folder's lock (:mod:`kn_lens.folder_lock`) while ``step`` runs:
        exclusively, but shared by the shards of ``attribute``; re-entrant within this run."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        shared = step == "attribute" and self.shard.n > 1
        what = " ".join([PROG, *(self.argv or [self.command])])
        with folder_lock(self.dir.path, what, shared=shared):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def record_options(self) -> None:
        """Record the run's options in DIR/run.json (later commands' defaults); called once a
        step succeeded or stored work, so a refused or failed step leaves run.json as it was."""
        o = self.opts
        self.dir.record_options({k: o[k] for k in RECORDED_DEFAULTS}, self.command, self.argv)

    def check_paths(self) -> None:
        """Refuse a data source or a model path that does not exist, before anything loads."""
        o = self.opts
        check_source(o["data"], o["lama"], o["patterns"], o["web"])
        m = str(o["model"])
        looks_like_path = m.startswith((".", "/", "~")) or m.count("/") > 1
        path = Path(m).expanduser()
        is_gguf = path.suffix.lower() == ".gguf"
        if m != "default" and (looks_like_path or is_gguf):
            if is_gguf and not path.is_file():
                raise PipelineError(f"--model {m}: no such .gguf file")
            if not is_gguf and not path.is_dir():
                raise PipelineError(f"--model {m}: no such folder")

    # ---- config ----------------------------------------------------------------------------
    @property
    def config(self) -> PaperConfig:
        """The method's settings: ``config`` with the run's steps and seed, the compute settings'
        batch size (the default of the model's device) and dtype, and then every field the
        given ``config`` changed from PaperConfig's default."""
        paper, base = PaperConfig(), self.base_config
        changed = {
            f.name: getattr(base, f.name)
            for f in fields(PaperConfig)
            if getattr(base, f.name) != getattr(paper, f.name)
        }
        run = base.with_(steps=int(self.opts["steps"]), seed=int(self.opts["seed"]))
        device = self.compute.device or (self._model.cfg.device if self._model else None)
        return self.compute.apply(run, device).with_(**changed)

    @property
    def weights_digest(self) -> str:
        """SHA-256 of the model's weight, config and tokenizer files
        (:func:`kn_lens.models.files.model_digest`), computed once per run."""
        if self._weights is None:
            self._weights = model_digest(self.opts["model"])
        return self._weights

    @property
    def score_settings(self) -> dict[str, Any]:
        """What attribution scores depend on besides the fact
        (:func:`kn_lens.rundir.score_settings`), the model files' hash included."""
        return score_settings(str(self.opts["model"]), self.config, self.weights_digest)

    def fingerprints(self) -> dict[str, str]:
        """The current fingerprint of each selected fact, by bag key."""
        settings = self.score_settings
        return {b.key: fingerprint(b, settings) for b in self.bags}

    def fingerprint_check(self) -> Callable[[str, Any], bool]:
        """``ok(key, stored fingerprint)``: whether a stored result of fact ``key`` may be used,
        i.e. its fingerprint is the fact's current one, or one from before weight hashing when
        the folder's adopted weights (:meth:`kn_lens.rundir.RunDir.legacy_weights`) are the
        current ones."""
        mine, digest = self.fingerprints(), self.weights_digest
        old: dict[str, str] = {}
        if self.dir.legacy_weights(digest, str(self.opts["model"])) == digest:
            settings = score_settings(str(self.opts["model"]), self.config)
            old = {b.key: fingerprint(b, settings) for b in self.bags}

        def ok(key: str, fp: Any) -> bool:
            return isinstance(fp, str) and fp in (mine.get(key), old.get(key))

        return ok

    # ---- model and facts -------------------------------------------------------------------
    @property
    def model(self) -> Model:
        """The model, loaded on first use."""
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
            n_loaded = {b.key: len(b.prompts) for b in bags}
            check = usable_bags_of(o["model"], bags, lambda: self.model)
            BagCheck(check.kept, check.skipped).log(len(bags), logger=log)
            bags = check.kept
            if o.get("facts"):
                bags = select_keys(bags, read_keys(o["facts"]), o["facts"])
            bags = sample_bags(bags, o["max_bags"], int(o["seed"]))
            self._dropped_prompts = self._log_dropped(bags, n_loaded)
            if o.get("max_prompts"):
                bags = [cap_prompts(b, int(o["max_prompts"]), int(o["seed"])) for b in bags]
            if not bags:
                source = f"--data {o['data']}" + (
                    f" --facts {o['facts']}" if o.get("facts") else ""
                )
                raise PipelineError(
                    f"no facts left to analyse from {source} (check --data and --relations; an "
                    "encoder needs "
                    "answers that are single tokens of its vocabulary, a decoder prompts with the "
                    "subject before the answer)"
                )
            self._bags = bags
            rels = self.relations
            log.info(
                "%d facts from %d relation(s): %s",
                len(bags),
                len(rels),
                ", ".join(rels) if len(rels) <= 12 else ", ".join(rels[:12]) + ", ...",
            )
        return self._bags

    @staticmethod
    def _log_dropped(bags: Sequence[FactBag], n_loaded: Mapping[str, int]) -> dict[str, int]:
        """Prompts the model cannot use (a decoder: the answer before the subject), counted over
        the selected facts only, per relation; logged at INFO."""
        dropped: dict[str, int] = {}
        total: dict[str, int] = {}
        for b in bags:
            n = n_loaded.get(b.key, len(b.prompts))
            total[b.relation] = total.get(b.relation, 0) + n
            if n > len(b.prompts):
                dropped[b.relation] = dropped.get(b.relation, 0) + n - len(b.prompts)
        for rel, n in dropped.items():
            log.info(
                "%s: %d of the selected facts' %d prompt(s) dropped (the answer comes before "
                "the subject)",
                rel,
                n,
                total[rel],
            )
        return dropped

    def knowledge(self) -> dict[str, FactKnowledge]:
        """Whether the model knows each selected fact (:func:`kn_lens.readout.known_facts`,
        computed once per run); every analysis measures the known facts only."""
        if self._known is None:
            cfg = self.config
            self._known = known_facts(
                self.model, self.bags, batch_size=cfg.batch_size, threshold=cfg.known_share
            )
            unknown = [k for k, f in self._known.items() if not f.known]
            log.info(
                "%d of %d selected fact(s) known to the model (%s)",
                len(self._known) - len(unknown),
                len(self._known),
                known_rule(self.config.known_share),
            )
            if unknown:
                log.warning(
                    "%d fact(s) the model does not know are left out of every analysis but "
                    "identify: %s",
                    len(unknown),
                    ", ".join(self._known[k].key for k in unknown[:10])
                    + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else ""),
                )
        return self._known

    def prompt_examples(self, n_facts: int = 6, n_prompts: int = 3) -> dict[str, Any]:
        """The first fact of up to ``n_facts`` relations with its first ``n_prompts`` prompts
        exactly as the model is fed them (a decoder's cut before the answer), for the report."""
        out: dict[str, Any] = {}
        for b in self.bags:
            if len(out) >= n_facts:
                break
            if not any(k.startswith(f"{b.relation}/") for k in out):
                out[b.key] = {
                    "subject": b.subject,
                    "object": b.object,
                    "prompts": list(b.prompts[:n_prompts]),
                    "n_prompts": len(b.prompts),
                }
        return out

    def selection(self) -> str:
        """The digest of the selected facts and their fingerprints
        (:func:`kn_lens.coverage.selection_id`)."""
        return selection_id(self.fingerprints())

    @property
    def relations(self) -> list[str]:
        return list(dict.fromkeys(b.relation for b in self.bags))

    def templates(self, relations: Sequence[str]) -> Mapping[str, Sequence[str]] | None:
        """The source's PARAREL templates of ``relations`` (``None``: the source has none)."""
        o = self.opts
        return load_templates(o["data"], o["lama"], o["patterns"], relations)

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
            mine, ok = self.fingerprints(), self.fingerprint_check()
            have = {k for by_key in stored.values() for k in by_key}
            stale = [k for k in mine if k in have and not ok(k, fps.get(k))]
            if stale:
                unknown = [k for k in stale if k not in fps]
                why = (
                    f"holds no fingerprint for {len(unknown)} selected fact(s) (e.g. {unknown[0]})"
                    if unknown
                    else f"was computed from other facts or settings, or other model files, for "
                    f"{len(stale)} selected fact(s) (e.g. {stale[0]})"
                )
                raise PipelineError(
                    f"{self.dir.neurons_json} {why}: run `kn-lens identify "
                    f"--out {self.dir.path}` again"
                )
            self._neurons = {
                m: {k: v for k, v in by_key.items() if k in mine} for m, by_key in stored.items()
            }
        return self._neurons.get(which, {})

    # ---- results.json ------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The run's metadata in results.json: model, data, config, versions, command, device."""
        model_info: dict[str, Any] = {"name": self.opts["model"]}
        if self._weights is not None:
            model_info["files_sha256"] = self._weights
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
        keys = ("data", "lama", "patterns", "web", "relations", "max_bags", "facts", "max_prompts")
        data_info: dict[str, Any] = {k: o[k] for k in keys}
        if self._bags is not None:
            data_info.update(
                n_facts=len(self._bags),
                n_relations=len(self.relations),
                facts_per_relation={
                    r: sum(b.relation == r for b in self._bags) for r in self.relations
                },
                relation_labels={b.relation: b.relation_label for b in self._bags},
                dropped_prompts=self._dropped_prompts,
                selection=self.selection(),
                prompts_as_fed=self.prompt_examples(),
            )
        out: dict[str, Any] = {}
        if self._known is not None and self._bags is not None:
            facts = self._known.values()
            out["known"] = {
                "rule": known_rule(self.config.known_share),
                "threshold": self.config.known_share,
                "selection": data_info["selection"],
                "n_facts": len(self._known),
                "n_known": sum(f.known for f in facts),
                "unknown": {f.key: f.why() for f in facts if not f.known},
                "facts": {
                    f.key: {"n_prompts": f.n_prompts, "n_top1": f.n_top1, "p_answer": f.p_answer}
                    for f in facts
                },
            }
        return {
            **out,
            "started": self.started,
            "model": model_info,
            "data": data_info,
            "config": self.config.to_dict(),
            "versions": versions(),
            "command": " ".join([PROG, *(self.argv or [self.command])]),
            "device": str(self._model.cfg.device) if self._model is not None else None,
        }

    def save(self, name: str, result: Any, seconds: float, cpu_seconds: float) -> None:
        """Merge one step's result and its timings into DIR/results.json."""
        self.dir.save_result(name, result, seconds, meta=self.meta, cpu_seconds=cpu_seconds)
