"""Held-out paraphrases: neurons found on half of each bag, suppressed on the other half."""

from __future__ import annotations

import json

import pytest

from kn_lens.config import PaperConfig
from kn_lens.data import load_jsonl_facts
from kn_lens.experiments import ANALYSES
from kn_lens.experiments.controls import random_control
from kn_lens.experiments.heldout import HeldoutResult, heldout_paraphrases, split_prompts
from kn_lens.interventions import scaled_answer_reads
from kn_lens.knowledge_neurons import identify_all, score_bags
from kn_lens.readout import encode_facts

from ..cli.helpers import write_facts


def test_split_is_seeded_disjoint_and_complete():
    for n in (2, 3, 4, 9):
        a, b = split_prompts(n, 0, "P19/3")
        assert sorted(a + b) == list(range(n)) and len(a) == (n + 1) // 2
        assert (a, b) == split_prompts(n, 0, "P19/3")
    assert any(split_prompts(9, 0, "P19/3") != split_prompts(9, 0, f"P19/{i}") for i in range(4))


@pytest.fixture(scope="module")
def scored(tiny_model, tmp_path_factory):
    bags = load_jsonl_facts(write_facts(tmp_path_factory.mktemp("f") / "f.jsonl", per_relation=3))
    cfg = PaperConfig(steps=2, target_neurons=(1.0, 3.0))
    return bags, score_bags(tiny_model, bags, cfg), cfg


def test_heldout_matches_its_definition(tiny_model, scored):
    bags, scores, cfg = scored
    res = heldout_paraphrases(tiny_model, bags, scores, cfg)
    assert isinstance(res, HeldoutResult) and res.facts
    halves = {b.key: split_prompts(len(b.prompts), cfg.seed, b.key) for b in bags}
    found = identify_all([s.select_prompts(halves[s.key][0]) for s in scores], cfg, "ig")
    by_key = {b.key: b for b in bags}
    for f in res.facts:
        b = by_key[f.key]
        assert (f.finding, f.heldout) == halves[f.key]
        ns = found[f.relation].neurons[f.key]
        assert f.neurons == [(n.layer, n.index) for n in ns]
        enc = encode_facts(tiny_model, list(b.prompts), [b.object] * len(b.prompts))
        base, top0 = scaled_answer_reads(tiny_model, enc, [], None)
        for arm, arm_ns in (("ours", ns), ("random", random_control(ns, 64, cfg.seed, f.key))):
            probs, top = scaled_answer_reads(tiny_model, enc, arm_ns, 0.0)
            want = float((probs - base)[f.heldout].mean())
            assert f.delta[arm]["heldout"] == pytest.approx(want, abs=1e-6)
            flips = float((top != top0)[f.heldout].float().mean())
            assert f.flip[arm]["heldout"] == pytest.approx(flips)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema"] == "heldout" and set(d["overall"]) == {"ours", "random"}
    rows = ANALYSES["heldout"].rows(d, ANALYSES["heldout"].paper, {})
    assert rows and ANALYSES["heldout"].needs_scores


def test_select_prompts_and_bad_input(scored):
    _, scores, _ = scored
    s = scores[0]
    sub = s.select_prompts([2, 0])
    assert sub.n_prompts == 2 and sub.scores["ig"] == [s.scores["ig"][2], s.scores["ig"][0]]
    with pytest.raises(ValueError, match="out of range"):
        s.select_prompts([s.n_prompts])
