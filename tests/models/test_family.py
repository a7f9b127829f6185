"""The model-family interface (kn_lens.models.family): one set of calls for both families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION

if not HAS_HOOKED_CLASSES:  # these tests build HookedTransformers from configs
    pytest.skip(
        f"TransformerLens {TL_VERSION} has no HookedTransformer (the bridge's decoder tests: "
        "tests/models/test_bridge.py)",
        allow_module_level=True,
    )
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from kn_lens.data import FactBag
from kn_lens.data.facts import Fact, fill_template, prefix_prompt
from kn_lens.experiments.update import update_deltas, update_fact
from kn_lens.interventions import neuron_hooks, scaled_answer_probs
from kn_lens.models.decoder import DecoderFamily, answer_logprob, encode_decoder, next_token
from kn_lens.models.encoder import EncoderFamily
from kn_lens.models.family import Family, family_of
from kn_lens.neuron import Neuron
from kn_lens.readout import encode_facts, score_prompts, usable_bags
from kn_lens.weights import read_value_vectors

from ..word_tokenizer import save_word_tokenizer

WORDS = ["<unk>", "<bos>", "the", "capital", "of", "France", "is", "Paris", "New", "York", "city"]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> HookedTransformer:
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tok")
    save_word_tokenizer(folder, WORDS, bos="<bos>", pad="<unk>")
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_vocab=len(WORDS),
        d_mlp=24,
        act_fn="gelu",
        seed=0,
        normalization_type="LN",
        device="cpu",
        dtype=torch.float64,
    )
    model = HookedTransformer(cfg, tokenizer=PreTrainedTokenizerFast.from_pretrained(folder))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model


def _bag(subject: str, obj: str, templates: list[str], index: int = 0) -> FactBag:
    fact = Fact(subject, "P36", "capital", "1-1", obj)
    return FactBag(fact, tuple(fill_template(t, subject) for t in templates), index)


def test_family_of_each_model(decoder, tiny_model):
    assert isinstance(family_of(decoder), DecoderFamily)
    assert isinstance(family_of(tiny_model), EncoderFamily)
    assert isinstance(family_of(decoder), Family) and isinstance(family_of(tiny_model), Family)
    with pytest.raises(Exception, match="HookedEncoder"):  # beartype's check, or ours
        family_of(object())  # type: ignore[arg-type]


def test_prefix_prompts_drop_answer_first_templates():
    assert prefix_prompt("The official language of France is the [MASK] language.", "France") == (
        "The official language of France is the"
    )
    assert prefix_prompt("[MASK] is the capital of France .", "France") is None
    assert prefix_prompt("Its capital , [MASK] , is in France .", "France") is None
    bag = _bag("France", "Paris", ["the capital of [X] is [Y] .", "[Y] is the capital of [X] ."])
    new, dropped = bag.to_prefix_bag()
    assert new is not None and new.prompts == ("the capital of France is",) and dropped == 1
    assert new.key == bag.key and new.is_prefix and not bag.is_prefix
    assert new.to_prefix_bag() == (new, 0)
    gone, n = _bag("France", "Paris", ["[Y] is the capital of [X] ."]).to_prefix_bag()
    assert gone is None and n == 1


def test_usable_bags_per_family(decoder, tiny_model):
    bags = [
        _bag("France", "Paris", ["the capital of [X] is [Y] .", "[Y] is the capital of [X] ."]),
        _bag("France", "New York", ["[Y] is the capital city of [X] ."], index=1),
    ]
    dec = usable_bags(decoder, bags)
    assert [b.key for b in dec.kept] == ["P36/0"] and dec.dropped_prompts == {"P36": 2}
    assert [b.key for b, _ in dec.skipped] == ["P36/1"]
    enc = usable_bags(tiny_model, [b for b in bags if b.object == "Paris"] + dec.kept)
    # the encoder keeps the masked bag and skips the decoder bag, saying why
    assert [b.key for b in enc.kept] == ["P36/0"] and not enc.kept[0].is_prefix
    assert "no [MASK]" in enc.skipped[0][1]


@pytest.mark.skipif(not (DATA / "pararel").is_dir(), reason="../shared/data is not present")
def test_pararel_templates_kept_for_decoders():
    """PARAREL keeps 6 of 9 P37 templates and 8 of 14 P36 templates (six P36 templates begin
    with [Y]; the issue's "9 of 14" counts one too many)."""
    from kn_lens.data.pararel import load_patterns

    for rel, kept, total in (("P37", 6, 9), ("P36", 8, 14)):
        pats = load_patterns(DATA / "pararel" / "patterns" / f"{rel}.jsonl")
        assert len(pats) == total
        assert sum(prefix_prompt(fill_template(t, "Xx"), "Xx") is not None for t in pats) == kept


def test_decoder_readout_equals_the_decoder_functions(decoder):
    prompts = ["the capital of France is", "France capital city"]
    answers = ["Paris", "New York"]
    fam = family_of(decoder)
    enc = fam.encode(decoder, prompts, answers)
    logits, logp = fam.readout(decoder, enc)
    assert logits.shape == (2, len(WORDS)) and logp is not None and logp.shape == (2,)
    ref = encode_decoder(decoder, prompts, answers)
    torch.testing.assert_close(logp.cpu(), answer_logprob(decoder, ref), rtol=1e-12, atol=0)
    assert torch.equal(logits.argmax(-1).cpu(), next_token(decoder, ref))
    scores = score_prompts(decoder, enc, torch.tensor([7, 7]))
    torch.testing.assert_close(scores.gold_logp, logp.cpu().float())
    assert scores.first_gold.tolist() == [7, 8]  # "Paris", "New"
    # rows selected one at a time read the same as the batch (left padding trimmed)
    for i in range(2):
        _, one = fam.readout(decoder, enc.select([i]))
        assert one is not None
        torch.testing.assert_close(one, logp[i : i + 1], rtol=1e-12, atol=1e-12)


def test_decoder_suppress_is_at_the_last_prompt_position(decoder):
    prompts = ["the capital of France is", "France capital city"]
    enc = encode_facts(decoder, prompts, ["Paris", "New York"])
    neurons = [Neuron(0, 3), Neuron(1, 5), Neuron(1, 7)]
    got = scaled_answer_probs(decoder, enc, neurons, 0.0, batch_size=1)
    assert got.shape == (2,)
    hooks = neuron_hooks(decoder, neurons, 0.0, positions=enc.read_pos)
    _, logp = family_of(decoder).readout(decoder, enc, fwd_hooks=hooks)
    assert logp is not None
    torch.testing.assert_close(got, logp.exp().float())
    assert not torch.allclose(got, scaled_answer_probs(decoder, enc, [], None))


def test_decoder_update_writes_the_unembedding_direction(decoder):
    neurons = [Neuron(0, 1), Neuron(1, 2)]
    before = read_value_vectors(decoder, neurons).clone()
    old, new = 7, 9  # "Paris", "York"
    with update_fact(decoder, neurons, "Paris", "York", lambda1=1.0, lambda2=8.0):
        after = read_value_vectors(decoder, neurons)
        want = before + update_deltas(
            before, decoder.W_U[:, old].detach(), decoder.W_U[:, new].detach(), 1.0, 8.0
        )
        torch.testing.assert_close(after, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(read_value_vectors(decoder, neurons), before)  # undone exactly
    with pytest.raises(ValueError, match="same token"):
        update_fact(decoder, neurons, "New York", "New")


def test_prompt_style_errors(decoder, tiny_model):
    with pytest.raises(ValueError, match=r"contains \[MASK\]"):
        encode_facts(decoder, ["the capital of [MASK] ."], ["Paris"])
    with pytest.raises(ValueError, match=r"exactly one \[MASK\]"):
        encode_facts(tiny_model, ["the capital of France is"], ["Paris"])
    with pytest.raises(ValueError, match="not a single vocabulary token"):
        encode_facts(tiny_model, ["the capital of [MASK] ."], ["New York"])


def test_decoder_bags_are_marked_and_checked():
    fact = Fact("France", "P36", "capital", "1-1", "Paris")
    with pytest.raises(ValueError, match="exactly one"):
        FactBag(fact, ("the capital of France is",))  # a masked bag needs its [MASK]
    with pytest.raises(ValueError, match="without"):
        FactBag(fact, ("the capital of [MASK] is",), prefix=True)
    bag = FactBag(fact, ("the capital of France is",), 3, prefix=True)
    assert FactBag.from_dict(bag.to_dict()) == bag and bag.to_dict()["prefix"] is True
    assert "prefix" not in _bag("France", "Paris", ["the capital of [X] is [Y] ."]).to_dict()
