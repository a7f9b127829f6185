"""The built-in fact world (kn_lens.data.world), its tokenizer and the shipped default model."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import torch

from kn_lens.data import MASK, FactBag, default_facts
from kn_lens.data.world import (
    build_world,
    default_query_pairs,
    default_web_bags,
    default_world,
    training_text,
)
from kn_lens.models import DEFAULT_MODEL_DIR
from kn_lens.training import main as training_main


def _tokenizer():
    from kn_lens.models import load_tokenizer

    return load_tokenizer(DEFAULT_MODEL_DIR)


def test_world_is_deterministic_for_a_seed():
    a, b, c = build_world(0), build_world(0), build_world(1)
    assert [x.to_dict() for x in a.bags] == [x.to_dict() for x in b.bags]
    assert a.web == b.web and a.filler == b.filler and a.weights == b.weights
    assert a.extra_objects == b.extra_objects and a.filler_eval == b.filler_eval
    assert [x.to_dict() for x in a.bags] != [x.to_dict() for x in c.bags]
    # the cached default world is the seed-0 world
    assert [x.to_dict() for x in default_world().bags] == [x.to_dict() for x in a.bags]


def test_default_world_shape():
    w = default_world()
    bags = default_facts()
    assert all(isinstance(b, FactBag) for b in bags)
    assert len(bags) >= 1500
    assert len(w.relations) >= 12
    assert {r.type for r in w.relations} == {"1-1", "N-1", "N-M"}
    ids = [r.id for r in w.relations]
    assert len(set(ids)) == len(ids) and all(i.startswith("W") for i in ids)
    for r in w.relations:
        assert len(r.templates) >= 6 and len(set(r.templates)) == len(r.templates)
        assert len(r.held_out_templates) >= 1
        assert not set(r.held_out_templates) & set(r.train_templates)
        assert r.label
    by_rel = defaultdict(list)
    for b in bags:
        by_rel[b.relation].append(b)
        for p in (*b.prompts, *b.held_out):
            assert p.count(MASK) == 1 and b.subject in p
        assert len(b.prompts) >= 1 and len(b.held_out) >= 1
    for rel, lst in by_rel.items():
        assert [b.index for b in lst] == list(range(len(lst)))
        assert len({b.subject for b in lst}) == len(lst), f"{rel}: duplicate subject"
        spec = w.relation(rel)
        objs = Counter(b.object for b in lst)
        if spec.type == "1-1":
            assert max(objs.values()) == 1
        else:  # the same object serves many subjects, as in T-REx
            assert max(objs.values()) >= 5
    # subjects are shared across relations (people have several facts)
    subj_rels = Counter(b.subject for b in bags)
    assert max(subj_rels.values()) >= 3
    # held-out template prompts never appear in the training text
    text = set(training_text(w))
    for b in bags[::50]:
        for p in b.held_out:
            assert p.replace(MASK, b.object) not in text
    assert abs(sum(w.weights) - 1) < 1e-9
    assert max(w.weights) / min(w.weights) > 3  # Zipf-like spread of mention frequencies


def test_web_bags_and_query_pairs_follow_bag_order():
    w = default_world()
    web, pairs = default_web_bags(), default_query_pairs()
    assert set(web) == set(pairs) == {r.id for r in w.relations}
    for rel in web:
        bags = w.bags_of(rel)
        assert len(web[rel]) == len(pairs[rel]) == len(bags)
        for bag, d, (s, o) in zip(bags, web[rel], pairs[rel], strict=False):
            assert (s, o) == (bag.subject, bag.object)
            assert d["th_bags"] and d["h_bags"]
            assert all(s in x and o in x for x in d["th_bags"])
            assert all(s in x and o not in x.split() for x in d["h_bags"])
    web["W01"][0]["th_bags"].clear()  # a copy: the cached world is untouched
    assert default_web_bags()["W01"][0]["th_bags"]
    assert len(w.filler) > 1000 and len(w.filler_eval) > 100
    assert not set(w.filler) & set(w.filler_eval)


def test_build_world_rejects_bad_input():
    with pytest.raises(ValueError, match="W99"):
        build_world(0, relations=["W01", "W99"])
    with pytest.raises(ValueError, match="scale"):
        build_world(0, scale=0.0)


def test_shipped_vocab_objects_single_tokens_subjects_multi_piece():
    tok = _tokenizer()
    w = default_world()
    vocab = tok.get_vocab()
    for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert s in vocab
    assert tok.tokenize("Paris") == ["Paris"]  # cased
    for o in w.objects:
        assert tok.tokenize(o) == [o], o
    n_pieces = Counter()
    for s, pieces in w.subject_pieces.items():
        got = tok.tokenize(s)
        assert got == list(pieces), (s, got)
        n_pieces[len(got)] += 1
    assert set(n_pieces) == {2, 3}


def test_shipped_checkpoint_meets_targets():
    from kn_lens import load_model
    from kn_lens.prompts import answer_token_ids, mask_logits

    files = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "README.md"} <= files
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file())
    assert size <= 25 * 2**20
    model = load_model("default", device="cpu")
    bags = default_facts()
    prompts = [p for b in bags for p in b.prompts]
    gold = answer_token_ids(model, [b.object for b in bags for _ in b.prompts])
    held = [p for b in bags[::2] for p in b.held_out]
    held_gold = answer_token_ids(model, [b.object for b in bags[::2] for _ in b.held_out])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: one thread is fastest on a shared machine
    try:
        logits = mask_logits(model, prompts, batch_size=256)
        held_logits = mask_logits(model, held, batch_size=256)
    finally:
        torch.set_num_threads(threads)
    acc = (logits.argmax(-1) == gold).float().mean().item()
    mean_p = logits.softmax(-1).gather(-1, gold[:, None]).mean().item()
    held_acc = (held_logits.argmax(-1) == held_gold).float().mean()
    print(
        f"default model: train acc {acc:.3f}, held-out acc {held_acc:.3f} (every 2nd bag), "
        f"mean gold p {mean_p:.3f}"
    )
    assert acc >= 0.85
    assert 0.3 <= mean_p <= 0.9
    assert held_acc.item() >= 0.3  # paraphrase generalisation: reported, asserted loosely
    # the TransformerLens conversion reproduces the training-time evaluation
    report = json.loads((DEFAULT_MODEL_DIR / "train_report.json").read_text())
    assert abs(report["train_acc"] - acc) < 0.01
    assert abs(report["mean_gold_p"] - mean_p) < 0.01
    assert report["filler_mlm_loss"] > 0


def test_short_training_on_tiny_world_lowers_loss(tmp_path):
    from kn_lens import load_model
    from kn_lens.prompts import mask_logits
    from kn_lens.training import train_default_model

    w = build_world(3, scale=0.03, n_filler=200, n_filler_eval=20)
    report = train_default_model(
        tmp_path,
        world=w,
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        batch_size=32,
        max_steps=60,
        warmup_steps=5,
        lr=3e-3,
        eval_every=30,
        eval_prompts=50,
        stop_acc=1.01,
    )
    first = report.loss_history[0][1]
    last = sum(x for _, x in report.loss_history[-3:]) / 3
    assert last < first - 0.5, report.loss_history
    assert report.steps == 60 and not report.stopped_early
    assert 0 <= report.train_acc <= 1 and report.filler_mlm_loss > 0
    for name in (
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
        "README.md",
        "train_report.json",
    ):
        assert (tmp_path / name).is_file(), name
    model = load_model(tmp_path, device="cpu")
    out = mask_logits(model, [w.bags[0].prompts[0]])
    assert out.shape == (1, model.cfg.d_vocab) and torch.isfinite(out).all()


def test_cli_show(capsys):
    assert training_main(["show", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert '"facts": 1620' in out and "W14" in out


def test_tokenizer_and_training_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from kn_lens.training import train_default_model

    w = build_world(5, scale=0.03, n_filler=200, n_filler_eval=20)
    kw = dict(
        world=w,
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        batch_size=16,
        max_steps=12,
        warmup_steps=2,
        eval_every=6,
        eval_prompts=20,
        stop_acc=1.01,
        focus_steps=4,
    )
    a = train_default_model(tmp_path / "a", **kw)
    b = train_default_model(tmp_path / "b", **kw)
    assert (tmp_path / "a" / "vocab.txt").read_text() == (tmp_path / "b" / "vocab.txt").read_text()
    assert a.loss_history == b.loss_history
    sa, sb = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
