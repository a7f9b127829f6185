"""The ``--out`` folder of a run: its file names, and reading and writing each of its files.

::

    DIR/run.json                   options of the last run (later commands reuse them by default)
    DIR/attribution/meta.json      what the scores were computed with (model, data, steps)
    DIR/attribution/P19.jsonl      one attribution record per fact, appended fact by fact
    DIR/attribution/P19.shard2of4.jsonl   ... the same, written by ``--shard 2/4``
    DIR/neurons.json               knowledge neurons per fact (ours and the baseline)
    DIR/trigger_prompts.jsonl      every fact's most and least activating web prompts
    DIR/localize_facts.jsonl       a resumable analysis' per-fact records, appended fact by fact
    DIR/results.json               every analysis' result + run metadata (below)
    DIR/report.md, DIR/report.html the paper's numbers beside this run's, figures, examples
    DIR/figures/*.html             one file per figure, sharing figures/plotly.min.js (+ .png)

``DIR/results.json`` holds::

    {
      "schema": "kn_lens.results", "schema_version": 1,
      "meta": {
        "model":    {"name": str, "n_layers": int, "d_mlp": int, ...},
        "data":     {"data": str, "lama"/"patterns"/"web": str | null,
                     "relations": [str] | null, "max_bags": int | null, "n_facts": int,
                     "n_relations": int, "facts_per_relation": {relation: int},
                     "relation_labels": {relation: str}},
        "config":   {PaperConfig field: value},       # kn_lens.config.PaperConfig.to_dict()
        "timings":  {step: wall seconds},
        "cpu_seconds": {step: CPU seconds of the process},   # optional
        "versions": {"kn_lens": str, "torch": str, "python": str, ...},
        "created": ISO time, "updated": ISO time, "command": str
      },
      "results": {analysis: Result.to_dict()},   # "schema" = the analysis name, "schema_version"
                                                # and the fields RESULTS.md documents; analyses:
                                                # identify, modify, distant, trigger, update, erase
      "paper":   {analysis: the registry entry's paper numbers}
    }

:data:`RESULTS_SPEC` states this in a small JSON-schema-like form and :func:`validate_results`
checks a document against it (plus: strict JSON, no NaN, each result's schema its name). Several
shard processes may write results.json at once: :meth:`RunDir.save_result` merges under a lock and
replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kn_lens.config import ANALYSIS_NAMES, PaperConfig
from kn_lens.data.facts import FactBag
from kn_lens.errors import KnLensError
from kn_lens.neuron import Neuron, neuron_map_from_json
from kn_lens.results import to_jsonable
from kn_lens.store import write_json_atomic

log = logging.getLogger(__name__)

NEURONS_SCHEMA = "kn_lens.neurons"

#: attribution/meta.json of a folder made since fingerprints hold the model files' hash.
_HASHED_MARK = "fingerprints_hash_weights"


class RunDirError(KnLensError):
    """A run folder's file is missing, unreadable, or from other inputs; the message names it."""


class OutFolderError(KnLensError):
    """``--out`` cannot be created or written (exit status 2)."""


#: Settings that enter a fingerprint only when they differ from the paper's value, so the
#: fingerprints of runs made before each setting existed stay valid.
_FINGERPRINT_UNLESS = (
    ("method", "ig"),
    ("dtype", "float32"),
    ("baseline", "zero"),
    ("objective", "prob"),
)


def score_settings(model: str, config: PaperConfig, weights: str | None = None) -> dict[str, Any]:
    """What attribution scores depend on besides the fact (part of every :func:`fingerprint`):
    the model's name, the content hash of its files (``weights``:
    :func:`kn_lens.models.files.model_digest`, its weights, config and tokenizer),
    ``config.steps``, and ``config.method`` / ``dtype`` / ``baseline`` / ``objective`` where
    they are not the paper's (``ig``, ``float32``, ``zero``, ``prob``).

    Fingerprints made before kn_lens hashed the weights lack ``weights``; a run folder holding
    them adopts the current weights' hash for them once (:meth:`RunDir.legacy_weights`)."""
    settings: dict[str, Any] = {"model": str(model), "steps": int(config.steps)}
    if weights is not None:
        settings["weights"] = str(weights)
    for name, paper in _FINGERPRINT_UNLESS:
        value = getattr(config, name, paper)
        if value != paper:
            settings[name] = str(value)
    return settings


def fingerprint(bag: FactBag, settings: Mapping[str, Any]) -> str:
    """A short hash of a fact (subject, relation, object, prompts) and the ``settings`` its scores
    depend on (:func:`score_settings`); equal fingerprints mean a stored result may be reused.

    Every stored attribution record and neurons.json carry the fingerprint of the fact they were
    computed from; a stored result whose fingerprint no longer matches is never read."""
    doc = {
        "subject": bag.subject,
        "relation": bag.relation,
        "object": bag.object,
        "prompts": list(bag.prompts),
        "settings": dict(sorted(settings.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def prepare_out(path: str | Path) -> bool:
    """Create the ``--out`` folder if needed and check that it can be written, before anything
    slow is loaded; returns whether this call created it. Errors name the folder, on one line."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutFolderError(f"--out {out}: exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".kn-lens-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        what = "create the folder" if created else "write into it"
        raise OutFolderError(f"--out {out}: cannot {what} ({e.strerror or e})") from None
    return created


def remove_if_empty(out: str | Path, created: bool) -> None:
    """A folder this run ``created`` and left without any result goes away again."""
    out = Path(out).expanduser()
    if not created or not out.is_dir():
        return
    leftovers = [
        p
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("run.json", ".results.lock", ".kn-lens.lock", "meta.json")
    ]
    if not leftovers:
        shutil.rmtree(out, ignore_errors=True)


def now() -> str:
    """The current UTC time, ISO format, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


RESULTS_SCHEMA = "kn_lens.results"
RESULTS_SCHEMA_VERSION = 1

# A small JSON-schema-like specification: {"type": ..., "required": {...}, "values": spec}.
_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_OBJ = {"type": "object"}
RESULTS_SPEC: dict[str, Any] = {
    "type": "object",
    "required": {
        "schema": {"type": "string", "const": RESULTS_SCHEMA},
        "schema_version": {"type": "integer", "const": RESULTS_SCHEMA_VERSION},
        "meta": {
            "type": "object",
            "required": {
                "model": {"type": "object", "required": {"name": _STR}},
                "data": {"type": "object", "required": {"data": _STR}},
                "config": {
                    "type": "object",
                    "required": {"steps": _INT, "t": _NUM, "p": _NUM, "seed": _INT},
                },
                "timings": {"type": "object", "values": _NUM},
                "versions": {
                    "type": "object",
                    "required": {"kn_lens": _STR, "python": _STR},
                    "values": _STR,
                },
                "created": _STR,
                "updated": _STR,
            },
        },
        "results": {
            "type": "object",
            "values": {"type": "object", "required": {"schema": _STR, "schema_version": _INT}},
        },
        "paper": {"type": "object", "values": {"type": ["object", "null"]}},
    },
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
}


def _check(value: Any, spec: Mapping[str, Any], where: str, errors: list[str]) -> None:
    types = spec.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in spec and value != spec["const"]:
        errors.append(f"{where}: expected {spec['const']!r}, got {value!r}")
    if isinstance(value, dict):
        for key, sub in spec.get("required", {}).items():
            if key not in value:
                errors.append(f"{where}: missing required key {key!r}")
            else:
                _check(value[key], sub, f"{where}.{key}", errors)
        if "values" in spec:
            for key, v in value.items():
                _check(v, spec["values"], f"{where}.{key}", errors)


def validate_results(doc: Any) -> list[str]:
    """Problems of a results.json document against :data:`RESULTS_SPEC` (empty when valid).

    Besides the spec, the document must be strict JSON (no NaN/Infinity), and each analysis'
    result must carry its own name as its ``schema``.
    """
    errors: list[str] = []
    _check(doc, RESULTS_SPEC, "results.json", errors)
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        errors.append("results.json: holds NaN or Infinity (not strict JSON)")
    except TypeError as e:
        errors.append(f"results.json: not JSON data ({e})")
    results = doc.get("results") if isinstance(doc, dict) else None
    if isinstance(results, dict):
        for name, res in results.items():
            if name not in ANALYSIS_NAMES:  # the registry's names (torch-free: no import here)
                errors.append(
                    f"results.json.results.{name}: unknown analysis; known: "
                    + ", ".join(ANALYSIS_NAMES)
                )
            elif isinstance(res, dict) and res.get("schema") not in (None, name):
                errors.append(
                    f"results.json.results.{name}: schema is {res.get('schema')!r}, "
                    f"expected {name!r}"
                )
    return errors


def check_results(doc: Any) -> None:
    """Raise ``ValueError`` listing every problem if ``doc`` is not a valid results.json."""
    errors = validate_results(doc)
    if errors:
        raise RunDirError("invalid results.json: " + "; ".join(errors))


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate DIR/results.json (``ValueError`` naming the problems)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise RunDirError(
            f"{path} not found: run a kn-lens analysis with --out {path.parent} first"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg}); remove it to start afresh") from None
    check_results(doc)
    return doc


def new_results_doc() -> dict[str, Any]:
    """An empty results.json document."""
    return {
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_SCHEMA_VERSION,
        "meta": {"created": now()},
        "results": {},
        "paper": {},
    }


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


class RunDir:
    """The ``--out`` folder of a run: its file names, and its files read and written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a folder")

    # ---- file names ---------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def attribution(self) -> Path:
        """The folder of the attribution stores (one JSON-lines file per relation and shard)."""
        return self.path / "attribution"

    @property
    def attribution_meta(self) -> Path:
        return self.attribution / "meta.json"

    @property
    def neurons_json(self) -> Path:
        return self.path / "neurons.json"

    @property
    def results_json(self) -> Path:
        return self.path / "results.json"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def details(self, analysis: str) -> Path:
        """The per-fact details of an analysis beside results.json (``trigger_prompts.jsonl``)."""
        return self.path / f"{analysis}_prompts.jsonl"

    def fact_log(self, analysis: str) -> Path:
        """The per-fact records of a resumable analysis (``localize_facts.jsonl``), appended as
        each fact is done (:class:`kn_lens.store.FactLogFile`)."""
        return self.path / f"{analysis}_facts.jsonl"

    def save_details(self, analysis: str, records: Iterable[Any]) -> Path:
        """Write ``records`` (an analysis' registry ``details`` of its result), one JSON object per
        line, to :meth:`details` atomically; returns the path."""
        path = self.details(analysis)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(to_jsonable(rec), ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path

    # ---- run.json -----------------------------------------------------------------------------
    def recorded_options(self) -> dict[str, Any]:
        """The options DIR/run.json recorded ({} when there is none). A run.json that is not
        valid JSON (truncated, edited) is an error naming it: its options are the folder's
        defaults, and guessing them would run on other facts."""
        if not self.run_json.is_file():
            return {}
        try:
            opts = json.loads(self.run_json.read_text()).get("options", {})
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not a JSON object"
            raise RunDirError(
                f"{self.run_json} is unreadable ({why}); remove it and give the options "
                "again (it records the folder's default options)"
            ) from None
        if not isinstance(opts, dict):
            raise RunDirError(f"{self.run_json}: 'options' must be a JSON object; remove it")
        return opts

    def record_options(
        self, options: Mapping[str, Any], command: str, argv: Sequence[str] | None
    ) -> None:
        write_json_atomic(
            self.run_json,
            {
                "options": dict(options),
                "command": command,
                "argv": list(argv) if argv is not None else None,
                "updated": now(),
            },
        )

    # ---- attribution/meta.json ------------------------------------------------------------------
    def check_attribution_meta(
        self, options: Mapping[str, Any], keys: Sequence[str], *, write: bool
    ) -> None:
        """Refuse to mix (or read) scores computed with other ``keys`` options; with ``write``,
        record ``options`` when no meta exists yet."""
        path = self.attribution_meta
        if path.is_file():
            try:
                theirs = json.loads(path.read_text()).get("options", {})
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                raise RunDirError(
                    f"{path} is unreadable; remove it if the scores are right"
                ) from None
            diff = [k for k in keys if k in theirs and theirs[k] != options[k]]
            if diff:
                raise RunDirError(
                    f"{path.parent} holds scores computed with "
                    + ", ".join(f"--{k.replace('_', '-')} {theirs[k]}" for k in diff)
                    + "; use the same options or another --out"
                )
        elif write:
            write_json_atomic(
                path, {"options": dict(options), "created": now(), _HASHED_MARK: True}
            )

    def legacy_weights(self, digest: str, model: str) -> str | None:
        """The weights hash that this folder's fingerprints from before weight hashing stand for
        (None when it has none: a folder kn_lens made since, or no attribution/meta.json).

        A folder whose attribution/meta.json predates weight hashing adopts ``digest`` (the
        current model files' hash) for its old fingerprints, once, with a warning, and records
        it in meta.json; from then on those fingerprints are valid for these weights only, so a
        later change of the weights scores their facts again."""
        path = self.attribution_meta
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{path} is unreadable; remove it if the scores are right") from None
        if not isinstance(meta, dict):
            raise RunDirError(f"{path} is not a JSON object; remove it if the scores are right")
        legacy = meta.get("legacy_weights")
        if isinstance(legacy, dict) and isinstance(legacy.get("sha256"), str):
            return str(legacy["sha256"])
        if meta.get(_HASHED_MARK):
            return None
        meta["legacy_weights"] = {"sha256": digest, "model": str(model), "adopted": now()}
        write_json_atomic(path, meta)
        log.warning(
            "%s: its stored scores and neurons were fingerprinted before kn_lens hashed the "
            "model's files; they are taken to come from the current files of --model %s "
            "(sha256 %s), once, as %s now records. If the weights changed since they were "
            "computed, remove %s and %s to compute them afresh. From now on a change of the "
            "weights scores the facts again.",
            self.path,
            model,
            digest[:12],
            path,
            self.attribution,
            self.neurons_json,
        )
        return digest

    # ---- neurons.json ---------------------------------------------------------------------------
    def save_neurons(
        self,
        neurons: Mapping[str, Mapping[str, Any]],
        relations: Mapping[str, Any],
        fingerprints: Mapping[str, str],
    ) -> None:
        """Write DIR/neurons.json::

        {"schema": "kn_lens.neurons", "schema_version": 1,
         "neurons": {"ours": {bag key: [[layer, index], ...]}, "baseline": {...}},
         "relations": {relation: {"ours": {"p": ..., "rounds": ..., "converged": ...}, ...}},
         "fingerprints": {bag key: the fingerprint of the fact the neurons come from}}
        """
        write_json_atomic(
            self.neurons_json,
            {
                "schema": NEURONS_SCHEMA,
                "schema_version": 1,
                "neurons": to_jsonable(neurons),
                "relations": to_jsonable(relations),
                "fingerprints": dict(fingerprints),
            },
        )

    def load_neurons(self) -> tuple[dict[str, dict[str, list[Neuron]]], dict[str, str]]:
        """``({"ours" | "baseline": {bag key: [Neuron, ...]}}, {bag key: fingerprint})`` from
        DIR/neurons.json."""
        path = self.neurons_json
        if not path.is_file():
            raise RunDirError(f"{path} not found: run `kn-lens identify --out {self.path}` first")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("schema") != NEURONS_SCHEMA:
            raise RunDirError(f"{path} is not a kn-lens neurons file")
        neurons = neuron_map_from_json(doc.get("neurons"), path)
        fps = doc.get("fingerprints", {})
        if not isinstance(fps, dict) or not all(isinstance(v, str) for v in fps.values()):
            raise RunDirError(
                f"{path}: 'fingerprints' must map fact keys to fingerprint strings; run "
                f"`kn-lens identify --out {self.path}` again"
            )
        return neurons, dict(fps)

    # ---- results.json ---------------------------------------------------------------------------
    def save_result(
        self,
        name: str,
        result: Any,
        seconds: float,
        *,
        meta: Callable[[], Mapping[str, Any]],
        cpu_seconds: float | None = None,
    ) -> Path:
        """Merge one step's result (``None`` for a step without one) and its timing into
        DIR/results.json, under a lock (shards may race). ``meta()`` gives the run's metadata;
        a registered analysis' paper numbers go to ``doc["paper"]``, once."""
        path = self.results_json
        with _locked(self.path / ".results.lock"):
            fresh = not path.is_file()
            doc = new_results_doc() if fresh else load_results(path)
            old, new_meta = doc["meta"], meta()
            if fresh and new_meta.get("started"):  # created: when the run that made it started
                old["created"] = new_meta["started"]
            old.update(
                {
                    k: v
                    for k, v in new_meta.items()
                    if k != "model" or len(v) > len(old.get("model", {}))
                }
            )
            old.setdefault("created", now())
            old["updated"] = now()
            old.setdefault("timings", {})[name] = round(float(seconds), 3)
            if cpu_seconds is not None:
                old.setdefault("cpu_seconds", {})[name] = round(float(cpu_seconds), 3)
            if result is not None:
                doc["results"][name] = (
                    result.to_dict() if hasattr(result, "to_dict") else to_jsonable(result)
                )
            if name in ANALYSIS_NAMES:
                from kn_lens.experiments import ANALYSES  # the registry (imports torch)

                doc["paper"][name] = to_jsonable(ANALYSES[name].paper)
            write_json_atomic(path, doc)
        log.info("wrote %s to %s", name, path)
        return path
