"""Shared fixtures of the experiment tests: the default model, its bags and knowledge neurons."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from kn_lens.config import PaperConfig
from kn_lens.neuron import Neuron

DEFAULT_BAGS_PER_RELATION = 24  # bags attributed per relation (IG, steps=10): ~15-25 s on CPU


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread (much faster for small models on a shared, busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=1)
def _default_model_and_bags():
    from kn_lens import load_model
    from kn_lens.data import default_facts

    return load_model("default", device="cpu"), default_facts()


@functools.lru_cache(maxsize=4)
def default_neurons(relation: str) -> dict[str, list[Neuron]]:
    """IG knowledge neurons (adaptive p) of the first bags of ``relation`` on the default model;
    cached for the session (shared with tests/test_erase.py)."""
    from kn_lens.knowledge_neurons import identify_relation, score_bags

    model, bags = _default_model_and_bags()
    cfg = PaperConfig(steps=10)
    rel_bags = [b for b in bags if b.relation == relation][:DEFAULT_BAGS_PER_RELATION]
    with one_thread():
        scores = score_bags(model, rel_bags, cfg, methods=("ig",))
    return identify_relation(scores, cfg, "ig").neurons


@pytest.fixture
def default_kn():
    """``(model, bags, neurons_of)``: the default model, its bags, and :func:`default_neurons`."""
    from kn_lens.models import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"default model not found in {DEFAULT_MODEL_DIR}")
    model, bags = _default_model_and_bags()
    return model, bags, default_neurons
