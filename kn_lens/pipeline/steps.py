"""The pipeline's steps: attribute, then each analysis of the registry, and ``reproduce``.

``attribute`` scores facts through an executor (:mod:`kn_lens.executors`) and writes each record
into the resumable store, fingerprinted; ``identify`` turns the stored scores into knowledge
neurons (``DIR/neurons.json``); every other analysis runs its registry entry on the model.
Nothing here is specific to one analysis: their differences live in the registry.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kn_lens.coverage import (
    NO_NEURONS,
    NOT_IDENTIFIED,
    key_list,
    measured_keys,
    result_skipped,
    section_facts,
)
from kn_lens.data.facts import FactBag
from kn_lens.executors import Executor, LocalExecutor, ModelSpec, RayExecutor
from kn_lens.experiments import ANALYSES, AnalysisInputs
from kn_lens.experiments.identify import IdentificationResult
from kn_lens.folder_lock import folder_lock
from kn_lens.knowledge_neurons import BagScores
from kn_lens.pipeline.options import ATTRIBUTION_KEYS, PipelineError
from kn_lens.pipeline.progress import FactProgress
from kn_lens.pipeline.state import RunState
from kn_lens.readout import known_rule
from kn_lens.report import write_report
from kn_lens.store import (
    FactLogFile,
    JsonlStore,
    check_store_names,
    read_union,
    relation_files,
    safe_name,
    stored_keys,
)

log = logging.getLogger("kn_lens.pipeline")


def write_outputs(run_dir: str | Path, *, lock: bool = False) -> dict[str, Any]:
    """Figures, report.md and report.html from ``run_dir``/results.json; the files written.
    With ``lock``, under the folder's lock (:mod:`kn_lens.folder_lock`), as ``kn-lens plot``."""
    if lock:
        with folder_lock(run_dir, "kn-lens plot"):
            return write_outputs(run_dir)
    written = write_report(run_dir)
    for kind, path in written.items():
        if kind in ("markdown", "html"):
            log.info("wrote %s", path)
    return written


class Pipeline(RunState):
    """Facts -> attribution (resumable) -> knowledge neurons -> analyses, on one run folder::

        from kn_lens.config import Compute, PaperConfig
        from kn_lens.pipeline import Pipeline

        p = Pipeline("runs/x", model="default", data="default", max_bags=2,
                     config=PaperConfig(t=0.3), compute=Compute(device="cpu"))
        p.attribute()          # scores the facts not yet stored (resumable); {"n_scored": ...}
        p.identify()           # knowledge neurons -> runs/x/neurons.json
        p.run_analysis("modify")
        p.reproduce()          # every step, results.json and the report

    Each step stores its result and timing in ``out/results.json``, as ``kn-lens`` does; the
    constructor's arguments are :class:`~kn_lens.pipeline.state.RunState`'s.
    """

    # ---- public steps ------------------------------------------------------------------------
    def attribute(self) -> dict[str, Any]:
        """Score every selected fact (of this shard) not yet stored with its current
        fingerprint; returns ``{"n_scored", "n_facts", "n_invalidated", "shard"}``."""
        return self.run_step("attribute")

    def identify(self) -> IdentificationResult:
        """Knowledge neurons from the stored scores (ours and the activation baseline) and their
        statistics; writes ``out/neurons.json``."""
        return self.run_step("identify")

    def run_analysis(self, name: str) -> Any:
        """Run analysis ``name`` of the registry (:data:`kn_lens.experiments.ANALYSES`) on the
        identified neurons; returns its result."""
        if name not in ANALYSES:
            raise PipelineError(f"unknown analysis {name!r}; known: " + ", ".join(ANALYSES))
        return self.run_step(name)

    def reproduce(
        self,
        skip: Iterable[str] = (),
        *,
        report: bool = True,
        on_failure: Callable[[str, Exception], None] | None = None,
    ) -> dict[str, Exception]:
        """Every step in order (``attribute``, then the registry's analyses but those in
        ``skip``), then the report (with ``report``). ``kn-lens reproduce`` samples
        :data:`~kn_lens.pipeline.options.REPRODUCE_DEFAULT_MAX_BAGS` facts per relation of the
        built-in world; build the Pipeline with ``reproduce=True`` (or ``max_bags``) for that.

        An analysis that fails is reported (``on_failure``, else the log) and the others still
        run; returns the failures by analysis name. ``attribute`` and ``identify`` failing stop
        the run (everything else depends on them)."""
        with self.locked("reproduce"):
            return self._reproduce(set(skip), report=report, on_failure=on_failure)

    def _reproduce(
        self,
        skip: set[str],
        *,
        report: bool,
        on_failure: Callable[[str, Exception], None] | None,
    ) -> dict[str, Exception]:
        t0, c0 = time.perf_counter(), time.process_time()
        failed: dict[str, Exception] = {}
        for step in ("attribute", *ANALYSES):
            if step in skip:
                log.info("skipping %s (--skip)", step)
                continue
            if step in ("attribute", "identify"):
                self.run_step(step)
                continue
            try:
                self.run_step(step)
            except Exception as e:  # noqa: BLE001 - one analysis failing must not lose the others
                failed[step] = e
                if on_failure is not None:
                    on_failure(step, e)
                else:
                    log.error("%s failed: %s", step, e, exc_info=e)
        self.save("reproduce", None, time.perf_counter() - t0, time.process_time() - c0)
        if report:
            self.write_report()
        return failed

    def run_step(self, step: str) -> Any:
        """Run one step (``attribute`` or an analysis) and store its result (and its time) in
        DIR/results.json; it holds the folder's lock (:meth:`locked`) and, once it succeeded,
        records the options in DIR/run.json."""
        with self.locked(step):
            result = self._run_step(step)
            self.record_options()
        return result

    def _run_step(self, step: str) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        log.info("== %s ==", step)
        if step == "attribute":
            summary = self._attribute()
            if summary["n_scored"]:  # nothing scored (all done before): keep the recorded time
                name = "attribute" if self.shard.n == 1 else f"attribute shard {self.shard}"
                self.save(name, None, time.perf_counter() - t0, time.process_time() - c0)
            log.info("attribute done in %.1fs", time.perf_counter() - t0)
            return summary
        left_out: dict[str, str] = {}
        if step == "identify":
            result = self._identify()
            offered = [b.key for b in self.bags]
        else:
            inputs, left_out = self._inputs(step)
            offered = [b.key for b in inputs.bags]
            result = self._analysis(step, inputs)
        doc = result.to_dict()
        self._note_left_out(result, doc, left_out)
        doc["coverage"] = section_facts(
            self.selection(),
            [b.key for b in self.bags],
            measured_keys(doc, offered),
            {**_skipped_of(doc), **left_out},
        )
        seconds = time.perf_counter() - t0
        self.save(step, doc, seconds, time.process_time() - c0)
        log.info("%s done in %.1fs", step, seconds)
        return result

    @staticmethod
    def _note_left_out(result: Any, doc: dict[str, Any], left_out: dict[str, str]) -> None:
        """Facts the pipeline left out go into the result's own ``skipped_facts`` (or
        ``skipped`` list) too, in the object and its dict."""
        if not left_out:
            return
        own = getattr(result, "skipped_facts", None)
        if isinstance(own, dict):
            for k, why in left_out.items():
                own.setdefault(k, why)
            doc["skipped_facts"] = {**left_out, **doc.get("skipped_facts", {})}
        elif isinstance(getattr(result, "skipped", None), list):
            extra = [{"key": k, "reason": why} for k, why in left_out.items()]
            result.skipped.extend(extra)
            doc["skipped"] = [*doc.get("skipped", []), *extra]

    def write_report(self) -> dict[str, Any]:
        """Figures, report.md and report.html from DIR/results.json (under the folder's lock)."""
        with self.locked("report"):
            return write_outputs(self.dir.path)

    # ---- attribution ---------------------------------------------------------------------------
    def make_executor(self) -> Executor:
        """The executor: in-process, Ray actors, or the one given."""
        if not isinstance(self.executor, str):
            return self.executor
        if self.executor == "ray":
            return RayExecutor(
                ModelSpec(str(self.opts["model"]), self.opts["device"]),
                address=self.ray_address,
                threads_per_actor=int(self.opts["threads"] or 1),
                score=self.score,
            )
        watch = FactProgress(self.progress).watch
        return LocalExecutor(lambda: self.model, score=self.score, around=watch)

    def _attribute(self) -> dict[str, Any]:
        """Append one JSON line per fact still to score; each fact is written exactly once."""
        shard = self.shard
        opts = {k: self.opts[k] for k in ATTRIBUTION_KEYS}
        self.dir.check_attribution_meta(opts, ATTRIBUTION_KEYS, write=False)
        mine = shard.select(self.bags)
        check_store_names(self.relations, self.dir.attribution)
        fps = self.fingerprints()
        ok = self.fingerprint_check()  # before a new meta.json: an old folder adopts its weights
        self.dir.check_attribution_meta(opts, ATTRIBUTION_KEYS, write=True)
        adir = self.dir.attribution

        def current(rec: dict[str, Any]) -> bool:
            return ok(str(rec.get("key", "")), rec.get("fingerprint"))

        by_rel: dict[str, list[FactBag]] = {}
        for b in mine:
            by_rel.setdefault(b.relation, []).append(b)
        todo: list[FactBag] = []
        paths: dict[str, Any] = {}
        invalidated = 0
        for rel, bags in by_rel.items():
            files = relation_files(adir, rel)
            valid = stored_keys(files, keep=current)
            stale = stored_keys(files) - valid
            pending = [b for b in bags if b.key not in valid]
            invalidated += sum(b.key in stale for b in pending)
            todo.extend(pending)
            paths[rel] = adir / f"{safe_name(rel)}{shard.suffix}.jsonl"
            log.info(
                "%s: %d fact(s) to score, %d already stored",
                rel,
                len(pending),
                len(bags) - len(pending),
            )
        if invalidated:
            log.warning(
                "%d stored record(s) belong to facts whose subject, object, prompts, "
                "settings or model files changed; scoring them again",
                invalidated,
            )
        stores: dict[str, JsonlStore] = {}
        stores_written = False
        executor = self.make_executor() if todo else None
        config = self.config
        try:
            with tqdm(
                total=len(todo),
                unit="fact",
                desc=f"attribute {shard}",
                dynamic_ncols=True,
                disable=not self.progress or not todo,
                file=sys.stderr,
            ) as bar:
                for bag, rec in executor.run(todo, config) if executor else ():
                    st = stores.get(bag.relation)
                    if st is None:  # opened on first use: no empty files for finished relations
                        others = [
                            p
                            for p in relation_files(adir, bag.relation)
                            if p != paths[bag.relation]
                        ]
                        st = JsonlStore(
                            paths[bag.relation],
                            keep=current,
                            done=stored_keys(others, keep=current),
                        ).open()
                        stores[bag.relation] = st
                    st.append({**rec, "fingerprint": fps[bag.key]})
                    if not stores_written:  # work stored under these options: the defaults
                        self.record_options()
                        stores_written = True
                    bar.update(1)
        finally:
            for st in stores.values():
                st.close()
            if executor is not None:
                executor.close()
        retried = getattr(executor, "retried", [])
        if retried:
            log.warning(
                "%d fact(s) were handed to another Ray actor after theirs died: %s",
                len(retried),
                ", ".join(retried[:10]),
            )
        log.info(
            "attribution: %d fact(s) scored now; all %d fact(s) of shard %s stored in %s",
            len(todo),
            len(mine),
            shard,
            adir,
        )
        return {
            "n_scored": len(todo),
            "n_facts": len(mine),
            "n_invalidated": invalidated,
            "shard": str(shard),
        }

    def read_scores(self) -> list[BagScores]:
        """Stored attribution scores of the selected facts (union of all shards), only those
        whose fingerprint matches the fact as selected now."""
        keys = [k for k in ATTRIBUTION_KEYS if k != "steps"]
        opts = {k: self.opts[k] for k in ATTRIBUTION_KEYS}
        self.dir.check_attribution_meta(opts, keys, write=False)
        ok = self.fingerprint_check()
        adir = self.dir.attribution
        check_store_names(self.relations, adir)
        out: list[BagScores] = []
        missing: dict[str, int] = {}
        for rel in self.relations:
            recs = read_union(
                relation_files(adir, rel),
                keep=lambda r: ok(str(r.get("key", "")), r.get("fingerprint")),
            )
            keys_rel = [b.key for b in self.bags if b.relation == rel]
            found = [BagScores.from_dict(recs[k]) for k in keys_rel if k in recs]
            out.extend(found)
            if len(found) < len(keys_rel):
                missing[rel] = len(keys_rel) - len(found)
        if not out:
            raise PipelineError(
                f"no attribution scores in {adir} for the selected facts as they are now: "
                f"run `kn-lens attribute --out {self.dir.path}` first"
            )
        if missing:
            log.warning(
                "facts without current attribution scores (not yet run, changed since, or "
                "another shard still running): %s",
                ", ".join(f"{r}: {n}" for r, n in missing.items()),
            )
        return out

    # ---- analyses ------------------------------------------------------------------------------
    def _identify(self) -> IdentificationResult:
        """Adaptive-p neurons per relation (ours = IG, baseline = activation) and their
        statistics, from the stored scores (no gradients); writes DIR/neurons.json."""
        scores = self.read_scores()
        result = ANALYSES["identify"].run(
            AnalysisInputs(
                None, self.bags, config=self.config, scores=scores, progress=self.progress
            )
        )
        if not isinstance(result, IdentificationResult):  # the registry's identify gives one
            raise TypeError(f"identify returned {type(result).__name__}")
        rel_info = {
            rel: {
                m: {
                    k: getattr(ms, k, None)
                    for k in ("p", "rounds", "converged", "neurons_per_fact")
                }
                for m, ms in (("ours", st.ours), ("baseline", st.baseline))
                if ms
            }
            for rel, st in result.relations.items()
        }
        fps = self.fingerprints()
        self.dir.save_neurons(result.neurons, rel_info, {s.key: fps[s.key] for s in scores})
        self._neurons = None
        for rel, info in rel_info.items():
            o = info.get("ours", {})
            log.info(
                "%s: p=%.2f after %s round(s), %.2f neurons per fact (ours)",
                rel,
                o.get("p") or 0.0,
                o.get("rounds"),
                o.get("neurons_per_fact") or 0.0,
            )
        log.info("wrote knowledge neurons to %s", self.dir.neurons_json)
        return result

    def analysis_inputs(self, name: str) -> AnalysisInputs:
        """What analysis ``name`` reads: the facts the model knows that have identified
        neurons, the model, web sentences if needed."""
        return self._inputs(name)[0]

    def _inputs(self, name: str) -> tuple[AnalysisInputs, dict[str, str]]:
        """:meth:`analysis_inputs`, and the selected facts left out of them with why: the
        facts the model does not know (:meth:`knowledge`) and those neurons.json has no entry
        for (a loud warning: the run asked for them)."""
        analysis = ANALYSES[name]
        if analysis.needs_web:
            self.web_facts()  # a missing --web is the error to see first
        ours_all = self.neurons("ours")
        if not ours_all:
            raise PipelineError(
                f"none of the selected facts has identified neurons in "
                f"{self.dir.neurons_json}: run `kn-lens identify` with the same options"
            )
        relations = self.erase
        if relations:
            unknown = [r for r in relations if r not in self.relations]
            if unknown:
                raise PipelineError(
                    f"--erase: unknown relation(s) {', '.join(unknown)}; selected: "
                    + ", ".join(self.relations)
                )
        known = self.knowledge()
        left_out: dict[str, str] = {}
        for b in self.bags:
            if not known[b.key].known:
                left_out[b.key] = known[b.key].why()
            elif b.key not in ours_all:
                left_out[b.key] = NOT_IDENTIFIED
        missing = [k for k, why in left_out.items() if why == NOT_IDENTIFIED]
        if missing:
            log.warning(
                "%s: %d of the %d selected fact(s) have no entry in %s and are NOT measured: "
                "%s; run `kn-lens attribute` and `kn-lens identify --out %s` with these options to "
                "measure them",
                name,
                len(missing),
                len(self.bags),
                self.dir.neurons_json,
                key_list(missing),
                self.dir.path,
            )
        bags = [b for b in self.bags if b.key not in left_out]
        if not bags:
            first, why = next(iter(left_out.items()))
            raise PipelineError(
                f"`{name}`: none of the {len(self.bags)} selected fact(s) is both known to the "
                f"model ({known_rule(self.config.known_share)}) and identified, e.g. {first}: "
                f"{why}; `--set known_share=0` measures every fact"
            )
        keep = {b.key for b in bags}
        ours = {k: v for k, v in ours_all.items() if k in keep}
        baseline = {k: v for k, v in self.neurons("baseline").items() if k in keep} or None
        if not any(ours.values()):
            raise PipelineError(
                f"`{name}`: none of the {len(bags)} known, identified fact(s) has knowledge "
                f"neurons ({NO_NEURONS})"
            )
        web = None
        if analysis.needs_web:
            web = self.web_facts()
            for b in bags:
                if b.relation not in web:
                    left_out[b.key] = "no web sentences for its relation"
            bags = [b for b in bags if b.key in ours and b.relation in web]
            if not bags:
                raise PipelineError(
                    f"`{name}`: none of the selected facts with neurons has web sentences"
                )
            keys = {b.key for b in bags}
            ours = {k: v for k, v in ours.items() if k in keys}
        templates = None
        if analysis.needs_templates is not None:
            templates = self.templates(analysis.needs_templates(sorted({b.relation for b in bags})))
        inputs = AnalysisInputs(
            self.model,
            bags,
            ours,
            baseline,
            self.config,
            scores=self.read_scores() if analysis.needs_scores else (),
            web_facts=web,
            relations=relations,
            facts_per_relation=self.n_edits,
            progress=self.progress,
            templates=templates,
        )
        return inputs, left_out

    def _analysis(self, name: str, inputs: AnalysisInputs) -> Any:
        """Run registered analysis ``name`` on ``inputs``; the run folder writes its per-fact
        details if it has any (the analysis itself writes no file)."""
        analysis = ANALYSES[name]
        if analysis.resumable:  # each fact's record is kept as soon as it is done
            with FactLogFile(self.dir.fact_log(name)) as fact_log:
                if len(fact_log):
                    log.info("%s: %d fact record(s) kept from earlier runs", name, len(fact_log))
                result = analysis.run(replace(inputs, fact_log=fact_log))
        else:
            result = analysis.run(inputs)
        if analysis.details is not None:
            path = self.dir.save_details(name, analysis.details(result.to_dict()))
            log.info("wrote the per-fact details of %s to %s", name, path)
        return result


def _skipped_of(doc: dict[str, Any]) -> dict[str, str]:
    """A result dict's own left-out facts, with the empty-neurons reason in words."""
    from_result = result_skipped(doc)
    return {k: NO_NEURONS if why == "no_neurons" else why for k, why in from_result.items()}
