"""Executors: local and Ray (a local Ray instance), the same records, each fact once, and a fact
whose actor is killed mid-run handed to another actor."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.data import default_facts, sample_bags
from kn_lens.executors import LocalExecutor, ModelSpec, RayExecutor, score_record
from kn_lens.models import load_model

ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed (pip install 'kn-lens[ray]')"
)

CONFIG = PaperConfig(steps=4)


@pytest.fixture(scope="module")
def bags():
    return sample_bags(default_facts(), 1, 0)[:6]


@pytest.fixture(scope="module")
def local_records(bags):
    torch.set_num_threads(1)
    ex = LocalExecutor(lambda: load_model("default", device="cpu"))
    return {b.key: r for b, r in ex.run(bags, CONFIG)}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def slow_score(model, bag, config):
    """:func:`score_record`, one second slower: keeps facts in flight long enough to kill an actor
    that still holds some."""
    time.sleep(1.0)
    return score_record(model, bag, config)


def _dump(record):
    return json.dumps(record, sort_keys=True)


def test_local_executor_yields_each_fact_once_with_its_key(bags, local_records):
    assert list(local_records) == [b.key for b in bags]
    assert all(r["key"] == k for k, r in local_records.items())


def test_local_executor_refuses_a_wrong_key(bags):
    ex = LocalExecutor(lambda: None, score=lambda m, b, c: {"key": "other"})
    with pytest.raises(RuntimeError, match="returned key 'other'"):
        list(ex.run(bags[:1], CONFIG))


def test_ray_executor_gives_the_local_records(ray_local, bags, local_records):
    ex = RayExecutor(ModelSpec("default"), n_actors=2)
    try:
        got = [(b.key, r) for b, r in ex.run(bags, CONFIG)]
    finally:
        ex.close()
    keys = [k for k, _ in got]
    assert sorted(keys) == sorted(local_records) and len(set(keys)) == len(keys)
    for k, r in got:  # same code, same weights, same thread count: the same numbers
        assert _dump(r) == _dump(local_records[k])


def test_killed_actor_facts_go_to_another_actor(ray_local, bags, local_records):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ex = RayExecutor(ModelSpec("default"), n_actors=2, score=slow_score, in_flight=3)
    got = []
    try:
        ex.start()
        # An actor runs its calls in order, so ask for the pid before it is given facts.
        pid = ray.get(ex.actors[0].pid.remote())
        for i, (b, r) in enumerate(ex.run(bags, CONFIG)):
            got.append((b.key, r))
            if i == 0:  # both actors hold queued facts now: kill the first one's process
                os.kill(pid, signal.SIGKILL)
    finally:
        ex.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    keys = [k for k, _ in got]
    assert sorted(keys) == sorted(local_records) and len(set(keys)) == len(keys)
    assert ex.retried, "the killed actor held facts; they must have been retried"
    for k, r in got:
        assert _dump(r) == _dump(local_records[k])
