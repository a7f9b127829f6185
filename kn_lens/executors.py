"""Executors: where per-fact attribution runs -- in this process, or on Ray actors.

Attribution is the expensive step (about 2 s per prompt for bert-base on a CPU core), and facts
are independent, so it is the step that scales out. An executor only *computes*: it takes the facts
still to score and yields ``(bag, record)`` pairs as they finish, in any order. The caller, the
``attribute`` step, owns the resumable store (:mod:`kn_lens.store`) and appends each record once, so
every fact is written exactly once whichever executor ran it, after a kill and a resume too, and
mixed with ``--shard`` runs. :class:`kn_lens.pipeline.Pipeline` picks the executor (``executor=``,
``kn-lens attribute --executor``) and is that caller.

- :class:`LocalExecutor` scores the facts one after the other with a model already loaded here.
- :class:`RayExecutor` scores them as Ray tasks over a pool of actors. Each actor loads the model
  once: one actor per GPU (``num_gpus=1``) when the cluster has GPUs, otherwise CPU actors with
  ``threads_per_actor`` torch threads each. When an actor dies mid-run (its process is killed, its
  node goes away), the facts it held are handed to another actor and the run completes; Ray
  restarts the dead actor in the background.

Ray is an optional dependency (``pip install "kn-lens[ray]"``); it is imported only when a
:class:`RayExecutor` starts.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kn_lens.config import PaperConfig
from kn_lens.data.facts import FactBag
from kn_lens.errors import KnLensError

log = logging.getLogger(__name__)

#: ``score(model, bag, config) -> record``: the attribution record of one fact, a JSON-able dict
#: whose ``"key"`` is ``bag.key``.
ScoreFn = Callable[[Any, FactBag, PaperConfig], dict[str, Any]]

EXECUTORS: tuple[str, ...] = ("local", "ray")


def score_record(model: Any, bag: FactBag, config: PaperConfig) -> dict[str, Any]:
    """The stored attribution record of one fact: the sparse scores of ``config.method`` (our
    neurons') and of the activation baseline
    (:func:`kn_lens.knowledge_neurons.score_bag`) as a dict keyed by ``bag.key``.

    ``config.batch_size`` and ``config.dtype`` are used as given: the pipeline fills them from
    its :class:`~kn_lens.config.Compute` (``--batch-size``, else the device's default)."""
    from kn_lens.knowledge_neurons import score_bag

    record = score_bag(
        model,
        bag,
        config,
        methods=(config.method, "activation"),
        dtype=config.dtype,
        batch_size=config.batch_size,
    ).to_dict()
    record.setdefault("key", bag.key)
    return record


@runtime_checkable
class Executor(Protocol):
    """Computes attribution records; the caller stores them."""

    def run(self, bags: Sequence[FactBag], config: PaperConfig) -> Iterator[tuple[FactBag, dict]]:
        """Yield ``(bag, record)`` once per bag, in completion order."""
        ...

    def close(self) -> None: ...


def _checked(bag: FactBag, record: dict[str, Any]) -> tuple[FactBag, dict[str, Any]]:
    if record.get("key") != bag.key:
        raise RuntimeError(f"scorer returned key {record.get('key')!r} for fact {bag.key}")
    return bag, record


@dataclass
class LocalExecutor:
    """Score facts in this process, in order, with ``load()``'s model (loaded on first use)."""

    load: Callable[[], Any]
    score: ScoreFn = score_record
    #: a context each fact is scored in (the pipeline's progress within a fact), or None.
    around: Callable[[FactBag], AbstractContextManager[Any]] | None = None

    def run(self, bags: Sequence[FactBag], config: PaperConfig) -> Iterator[tuple[FactBag, dict]]:
        if not bags:
            return
        model = self.load()
        for bag in bags:
            with self.around(bag) if self.around is not None else nullcontext():
                record = self.score(model, bag, config)
            yield _checked(bag, record)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ModelSpec:
    """What an actor needs to load its own copy of the model: ``kn_lens.load_model(name, device=,
    dtype=)``. ``device`` is chosen per actor (``cuda`` on a GPU actor, else ``cpu``) when None."""

    name: str
    device: str | None = None
    dtype: str = "float32"


class _Scorer:
    """The body of a Ray actor: one model, scoring one fact at a time."""

    def __init__(self, spec: ModelSpec, threads: int | None, score: ScoreFn, gpu: bool) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.spec, self.score, self.gpu = spec, score, gpu
        self.model: Any = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, bag: FactBag, config: PaperConfig) -> dict[str, Any]:
        import torch

        from kn_lens.models import load_model

        if self.model is None:
            device = self.spec.device or ("cuda" if self.gpu else "cpu")
            self.model = load_model(
                self.spec.name, device=device, dtype=getattr(torch, self.spec.dtype)
            )
        return self.score(self.model, bag, config)


@dataclass
class RayExecutor:
    """Score facts as Ray tasks over a pool of model-holding actors.

    Args:
        spec: the model each actor loads.
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the running cluster of
            this machine (``ray start --head`` / ``ray start --address``); any other value is
            passed to ``ray.init(address=...)``.
        n_actors: actors to start (default: one per GPU of the cluster, else
            ``CPUs // threads_per_actor``).
        threads_per_actor: torch threads of each CPU actor (and the CPUs it reserves).
        score: the per-fact function (default :func:`score_record`); it must be importable by
            the workers (a module-level function).
        in_flight: tasks queued per actor at a time.
    """

    spec: ModelSpec
    address: str | None = None
    n_actors: int | None = None
    threads_per_actor: int = 1
    score: ScoreFn = score_record
    in_flight: int = 2
    #: keys of the facts handed to another actor after theirs died, in order (for the run's log).
    retried: list[str] = field(default_factory=list)
    _actors: list[Any] = field(default_factory=list, repr=False)
    _started_ray: bool = field(default=False, repr=False)

    def start(self) -> None:
        """Connect to (or start) Ray and create the actors; :meth:`run` calls it."""
        if self._actors:
            return
        try:
            import ray
        except ImportError:
            raise KnLensError(
                "--executor ray needs Ray: pip install 'kn-lens[ray]' (Ray 2.x)"
            ) from None
        if not ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.address is None:
                kw["num_cpus"] = os.cpu_count() or 1
            else:
                kw["address"] = self.address
            ray.init(**kw)
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        threads = max(1, int(self.threads_per_actor))
        if gpus:
            n = self.n_actors or gpus
            opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        else:
            n = self.n_actors or max(1, cpus // threads)
            opts = {"num_cpus": threads}
        actor_cls = ray.remote(max_restarts=-1, max_task_retries=0, **opts)(_Scorer)
        self._actors = [
            actor_cls.remote(self.spec, None if gpus else threads, self.score, bool(gpus))
            for _ in range(n)
        ]
        log.info(
            "Ray: %d %s actor(s) for %s (cluster: %d CPU, %d GPU)",
            n,
            "GPU" if gpus else f"CPU ({threads} thread(s) each)",
            self.spec.name,
            cpus,
            gpus,
        )

    @property
    def actors(self) -> list[Any]:
        """The actor handles (started on first :meth:`run`)."""
        return list(self._actors)

    def run(self, bags: Sequence[FactBag], config: PaperConfig) -> Iterator[tuple[FactBag, dict]]:
        """Yield ``(bag, record)`` as the actors finish them; a fact whose actor died is handed
        to another actor (at most 3 tries per fact, then the error is raised). An actor that died
        once gets no more facts in this run (Ray may be restarting it, and a restarting actor
        fails every call at once); when every actor has died the run stops with an error."""
        if not bags:
            return
        self.start()
        import ray
        from ray.exceptions import RayActorError

        todo: deque[tuple[int, int]] = deque((i, 0) for i in range(len(bags)))  # (bag, tries)
        running: dict[Any, tuple[int, int, int]] = {}  # ref -> (bag, tries, actor)
        load = [0] * len(self._actors)
        alive = set(range(len(self._actors)))
        turn = 0

        def submit() -> None:
            nonlocal turn
            while todo and any(load[a] < self.in_flight for a in alive):
                i, tries = todo.popleft()
                a = turn % len(self._actors)
                while a not in alive or load[a] >= self.in_flight:
                    a = (a + 1) % len(self._actors)
                turn = a + 1
                ref = self._actors[a].run.remote(bags[i], config)
                running[ref] = (i, tries, a)
                load[a] += 1

        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            i, tries, a = running.pop(ref)
            load[a] -= 1
            try:
                record = ray.get(ref)
            except RayActorError as e:
                if tries + 1 >= 3:
                    raise RuntimeError(f"fact {bags[i].key}: its actor died 3 times ({e})") from e
                if a in alive:
                    log.warning("actor %d died; its facts go to the other actors", a)
                alive.discard(a)
                if not alive:
                    raise RuntimeError(
                        f"every Ray actor died (the last while scoring {bags[i].key}): {e}"
                    ) from e
                log.warning("handing %s to another actor", bags[i].key)
                self.retried.append(bags[i].key)
                todo.appendleft((i, tries + 1))
                submit()
                continue
            submit()
            yield _checked(bags[i], record)

    def close(self) -> None:
        if not self._actors:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray and self.address is None:
            ray.shutdown()
            self._started_ray = False
