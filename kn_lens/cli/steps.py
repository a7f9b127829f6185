"""The steps of ``kn-lens``: attribute, then each analysis of the registry, and ``reproduce``.

``attribute`` scores facts through an executor (:mod:`kn_lens.executors`) and writes each record
into the resumable store, fingerprinted; ``identify`` turns the stored scores into knowledge
neurons (``DIR/neurons.json``); every other analysis runs its registry entry on the model.
Nothing here is specific to one analysis: their differences live in the registry.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from kn_lens.cli.run import ATTRIBUTION_KEYS, CliError, Run, split_list
from kn_lens.data.facts import FactBag
from kn_lens.executors import Executor, LocalExecutor, ModelSpec, RayExecutor
from kn_lens.experiments import ANALYSES, AnalysisInputs
from kn_lens.experiments.identify import IdentificationResult
from kn_lens.knowledge_neurons import BagScores
from kn_lens.report import write_report
from kn_lens.store import JsonlStore, Shard, read_union, relation_files, safe_name, stored_keys

log = logging.getLogger("kn_lens.cli")


def make_executor(run: Run) -> Executor:
    """The executor ``--executor`` names: in-process, or Ray actors."""
    if getattr(run.args, "executor", "local") == "ray":
        return RayExecutor(
            ModelSpec(str(run.opts["model"]), run.opts["device"]),
            address=getattr(run.args, "ray_address", None),
            threads_per_actor=int(run.opts["threads"] or 1),
            score=run.score,
        )
    return LocalExecutor(lambda: run.model, score=run.score)


def step_attribute(run: Run) -> dict[str, Any]:
    """Score every selected fact of this shard not yet stored with its current fingerprint,
    appending one JSON line per fact; resumable, and each fact is written exactly once."""
    shard: Shard = getattr(run.args, "shard", Shard())
    opts = {k: run.opts[k] for k in ATTRIBUTION_KEYS}
    run.dir.check_attribution_meta(opts, ATTRIBUTION_KEYS, write=False)
    mine = shard.select(run.bags)
    fps = run.fingerprints()
    run.dir.check_attribution_meta(opts, ATTRIBUTION_KEYS, write=True)
    adir = run.dir.attribution

    def current(rec: dict[str, Any]) -> bool:
        return fps.get(rec.get("key", "")) == rec.get("fingerprint")

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
            "%d stored record(s) belong to facts whose subject, object, prompts or "
            "settings changed; scoring them again",
            invalidated,
        )
    stores: dict[str, JsonlStore] = {}
    executor = make_executor(run) if todo else None
    config = run.config
    try:
        with tqdm(
            total=len(todo),
            unit="fact",
            desc=f"attribute {shard}",
            dynamic_ncols=True,
            disable=not run.progress or not todo,
            file=sys.stderr,
        ) as bar:
            for bag, rec in executor.run(todo, config) if executor else ():
                st = stores.get(bag.relation)
                if st is None:  # opened on first use: no empty files for finished relations
                    others = [
                        p for p in relation_files(adir, bag.relation) if p != paths[bag.relation]
                    ]
                    st = JsonlStore(
                        paths[bag.relation], keep=current, done=stored_keys(others, keep=current)
                    ).open()
                    stores[bag.relation] = st
                st.append({**rec, "fingerprint": fps[bag.key]})
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


def read_scores(run: Run) -> list[BagScores]:
    """Stored attribution scores of the selected facts (union of all shards), only those whose
    fingerprint matches the fact as selected now."""
    keys = [k for k in ATTRIBUTION_KEYS if k != "steps"]
    run.dir.check_attribution_meta({k: run.opts[k] for k in ATTRIBUTION_KEYS}, keys, write=False)
    fps = run.fingerprints()
    adir = run.dir.attribution
    out: list[BagScores] = []
    missing: dict[str, int] = {}
    for rel in run.relations:
        recs = read_union(
            relation_files(adir, rel),
            keep=lambda r: fps.get(r.get("key", "")) == r.get("fingerprint"),
        )
        keys_rel = [b.key for b in run.bags if b.relation == rel]
        found = [BagScores.from_dict(recs[k]) for k in keys_rel if k in recs]
        out.extend(found)
        if len(found) < len(keys_rel):
            missing[rel] = len(keys_rel) - len(found)
    if not out:
        raise CliError(
            f"no attribution scores in {adir} for the selected facts as they are now: "
            f"run `kn-lens attribute --out {run.dir.path}` first"
        )
    if missing:
        log.warning(
            "facts without current attribution scores (not yet run, changed since, or "
            "another shard still running): %s",
            ", ".join(f"{r}: {n}" for r, n in missing.items()),
        )
    return out


def step_identify(run: Run) -> Any:
    """Adaptive-p neurons per relation (ours = IG, baseline = activation) and their statistics,
    from the stored scores (no gradients); writes DIR/neurons.json."""
    scores = read_scores(run)
    result = ANALYSES["identify"].run(
        AnalysisInputs(None, run.bags, config=run.config, scores=scores, progress=run.progress)
    )
    if not isinstance(result, IdentificationResult):  # the registry's identify gives one
        raise TypeError(f"identify returned {type(result).__name__}")
    rel_info = {
        rel: {
            m: {k: getattr(ms, k, None) for k in ("p", "rounds", "converged", "neurons_per_fact")}
            for m, ms in (("ours", st.ours), ("baseline", st.baseline))
            if ms
        }
        for rel, st in result.relations.items()
    }
    fps = run.fingerprints()
    run.dir.save_neurons(
        result.neurons,
        rel_info,
        {s.key: fps[s.key] for s in scores},
    )
    run._neurons = None
    for rel, info in rel_info.items():
        o = info.get("ours", {})
        log.info(
            "%s: p=%.2f after %s round(s), %.2f neurons per fact (ours)",
            rel,
            o.get("p") or 0.0,
            o.get("rounds"),
            o.get("neurons_per_fact") or 0.0,
        )
    log.info("wrote knowledge neurons to %s", run.dir.neurons_json)
    return result


def analysis_inputs(run: Run, name: str) -> AnalysisInputs:
    """What analysis ``name`` reads: the facts with neurons, the model, web sentences if needed."""
    analysis = ANALYSES[name]
    ours = run.neurons("ours")
    if not ours:
        raise CliError(
            f"none of the selected facts has identified neurons in "
            f"{run.dir.neurons_json}: run `kn-lens identify` with the same options"
        )
    baseline = run.neurons("baseline") or None
    bags = run.bags
    web = None
    if analysis.needs_web:
        web = run.web_facts()
        bags = [b for b in bags if b.key in ours and b.relation in web]
        if not bags:
            raise CliError(f"`{name}`: none of the selected facts with neurons has web sentences")
        keys = {b.key for b in bags}
        ours = {k: v for k, v in ours.items() if k in keys}
    relations = split_list(getattr(run.args, "erase", None))
    if relations:
        unknown = [r for r in relations if r not in run.relations]
        if unknown:
            raise CliError(
                f"--erase: unknown relation(s) {', '.join(unknown)}; selected: "
                + ", ".join(run.relations)
            )
    return AnalysisInputs(
        run.model,
        bags,
        ours,
        baseline,
        run.config,
        scores=read_scores(run) if analysis.needs_scores else (),
        web_facts=web,
        relations=relations,
        facts_per_relation=getattr(run.args, "n_edits", None),
        progress=run.progress,
    )


def step_analysis(run: Run, name: str) -> Any:
    """Run registered analysis ``name`` on the model; the run folder writes its per-fact details
    if it has any (the analysis itself writes no file)."""
    if name == "identify":
        return step_identify(run)
    analysis = ANALYSES[name]
    result = analysis.run(analysis_inputs(run, name))
    if analysis.details is not None:
        path = run.dir.save_details(name, analysis.details(result.to_dict()))
        log.info("wrote the per-fact details of %s to %s", name, path)
    return result


def run_step(run: Run, command: str) -> Any:
    """Run one step and store its result (and its time) in DIR/results.json."""
    t0, c0 = time.perf_counter(), time.process_time()
    log.info("== %s ==", command)
    if command == "attribute":
        summary = step_attribute(run)
        shard: Shard = getattr(run.args, "shard", Shard())
        if summary["n_scored"]:  # nothing scored (all done before): keep the recorded time
            name = "attribute" if shard.n == 1 else f"attribute shard {shard}"
            run.save(name, None, time.perf_counter() - t0, time.process_time() - c0)
        log.info("attribute done in %.1fs", time.perf_counter() - t0)
        return summary
    result = step_analysis(run, command)
    seconds = time.perf_counter() - t0
    run.save(command, result, seconds, time.process_time() - c0)
    log.info("%s done in %.1fs", command, seconds)
    return result


def write_outputs(run_dir: Any) -> dict[str, Any]:
    """Figures, report.md and report.html from DIR/results.json."""
    written = write_report(run_dir)
    for kind, path in written.items():
        if kind in ("markdown", "html"):
            log.info("wrote %s", path)
    return written
