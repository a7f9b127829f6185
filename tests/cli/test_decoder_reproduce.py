"""Every step of `kn-lens reproduce` on a decoder: a tiny random GPT-2 checkpoint with a word-level
tokenizer, the same facts and web sentences as the encoder CLI tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kn_lens import cli
from kn_lens.experiments import ANALYSES

from ..word_tokenizer import save_word_tokenizer
from .helpers import base_args, write_facts
from .test_cli import write_web

ANSWER_FIRST = "[Y] is where [X] was born ."


def save_gpt2(folder: Path, words: list[str], seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    eot = "<|endoftext|>"
    vocab = save_word_tokenizer(folder, words, specials=("<unk>", eot), bos=eot, eos=eot)
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    facts = write_facts(root / "facts.jsonl", per_relation=3)
    lines = [json.loads(x) for x in facts.read_text().splitlines()]
    for rec in lines:  # one template per P19 fact that a decoder cannot use
        if rec["relation"] == "P19":
            rec["templates"] = [*rec["templates"], ANSWER_FIRST]
    facts.write_text("".join(json.dumps(r) + "\n" for r in lines))
    web = write_web(root / "web", facts)
    text = facts.read_text() + " ".join(p.read_text() for p in web.iterdir())
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    ckpt = save_gpt2(root / "gpt2", words)
    out = root / "out"
    # a random decoder knows none of the facts: measure them all (--set known_share=0)
    args = base_args(ckpt, facts, out, "--steps", "2", "--web", str(web))
    rc = cli.main(["reproduce", *args, "--set", "known_share=0"])
    return rc, out, lines


def test_reproduce_runs_every_step_on_a_decoder(decoder_run):
    rc, out, lines = decoder_run
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == set(ANALYSES)
    meta = doc["meta"]
    # the answer-first template is dropped from each of the 3 P19 facts, and counted
    assert meta["data"]["dropped_prompts"] == {"P19": 3}
    assert meta["data"]["n_facts"] == len(lines)
    neurons = json.loads((out / "neurons.json").read_text())["neurons"]["ours"]
    assert len(neurons) == len(lines)
    for ns in neurons.values():
        for layer, index in ns:
            assert 0 <= layer < 2 and 0 <= index < 128
    assert (out / "report.md").is_file()
    ident = doc["results"]["identify"]
    assert ident["schema"] == "identify"
    distant = doc["results"]["distant"]
    assert distant["facts"], "no fact had decoder web prompts"


def test_decoder_prompts_are_the_text_before_the_answer(decoder_run):
    _, out, _ = decoder_run
    doc = json.loads((out / "results.json").read_text())
    trig = doc["results"]["trigger"]
    prompts = [p["prompt"] for f in trig["facts"] for p in f["top"] + f["bottom"]]
    assert prompts
    assert not any("[MASK]" in p for p in prompts)


def test_identify_reads_stored_scores_without_loading_the_decoder(decoder_run, monkeypatch):
    """identify needs the decoder's prompts, not its weights (SmolLM2 takes 18 s to load)."""
    from kn_lens.pipeline import Pipeline

    _, out, _ = decoder_run
    p = Pipeline(out, progress=False)
    p.identify()
    assert p._model is None  # the model was never loaded
    assert json.loads((out / "neurons.json").read_text())["neurons"]["ours"]


def test_report_shows_the_decoder_prompts_as_fed_and_the_known_facts(decoder_run):
    _, out, _ = decoder_run
    doc = json.loads((out / "results.json").read_text())
    fed = doc["meta"]["data"]["prompts_as_fed"]
    assert fed and all(
        "[MASK]" not in p and "[Y]" not in p for ex in fed.values() for p in ex["prompts"]
    )
    assert doc["meta"]["known"]["threshold"] == 0.0  # --set known_share=0
    md = (out / "report.md").read_text()
    assert "Prompts as the model is fed them" in md
    first = next(iter(fed.values()))["prompts"][0]
    assert f'"{first}"' in md
