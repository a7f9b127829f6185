"""Progress within a fact: the engine reports its gradient rows after every chunk (issue 21: a
SmolLM2 fact sat at "attribute 1/1: 0%" for 10 minutes), the scores are the same, and the
pipeline's watcher turns the reports into a bar and log lines."""

from __future__ import annotations

import logging

import pytest
import torch

from kn_lens.attribution import attribute
from kn_lens.attribution.engine import reporting_progress
from kn_lens.data.facts import Fact, FactBag
from kn_lens.pipeline.progress import FactProgress, duration

PROMPTS = [
    "Alice was born in [MASK] .",
    "the capital of the country is [MASK] .",
    "[MASK] is the city of Bob",
]


@pytest.mark.parametrize("method", ["ig", "grad_x_act"])
def test_every_chunk_is_reported_and_the_scores_do_not_change(tiny_model, method) -> None:
    calls: list[tuple[int, int]] = []
    got = attribute(
        tiny_model,
        PROMPTS,
        "Paris",
        steps=3,
        batch_size=2,
        method=method,
        progress=lambda d, t: calls.append((d, t)),
    )
    plain = attribute(tiny_model, PROMPTS, "Paris", steps=3, batch_size=2, method=method)
    assert torch.equal(got, plain)
    per_prompt = tiny_model.cfg.n_layers * 3 if method == "ig" else 1
    total = len(PROMPTS) * per_prompt
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) > 2  # several chunks, in order
    assert {t for _, t in calls} == {total}


def test_reporting_progress_reaches_calls_that_pass_none(tiny_model) -> None:
    calls: list[tuple[int, int]] = []
    with reporting_progress(lambda d, t: calls.append((d, t))):
        attribute(tiny_model, PROMPTS[:1], "Paris", steps=2, batch_size=4)
    assert calls and calls[-1][0] == calls[-1][1]
    n = len(calls)
    attribute(tiny_model, PROMPTS[:1], "Paris", steps=2, batch_size=4)  # outside: no report
    assert len(calls) == n


def test_fact_progress_logs_rows_and_time_left(tiny_model, caplog) -> None:
    bag = FactBag(Fact("Alice", "P19", "place of birth", "N-1", "Paris"), tuple(PROMPTS))
    watch = FactProgress(bar=False, every=0.0).watch
    with caplog.at_level(logging.INFO, logger="kn_lens.pipeline"), watch(bag):
        attribute(tiny_model, PROMPTS, "Paris", steps=3, batch_size=4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attribute ")]
    assert lines and f"attribute {bag.key}: " in lines[0]
    assert " rows (" in lines[0] and "left" in lines[0]


def test_duration() -> None:
    assert duration(42.0) == "42 s" and duration(210.0) == "3.5 min" and duration(7200.0) == "2.0 h"
