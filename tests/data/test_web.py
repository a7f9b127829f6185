"""Web prompts T1/T2/T3: masking rules, skip counts, truncation, and the Bing-format loader."""

from __future__ import annotations

import random

import pytest

from kn_lens.data import MASK, DataError
from kn_lens.data.web import (
    MaskError,
    build_web_prompts,
    load_web_facts,
    mask_random_word,
    mask_tail,
    maskable_words,
    match_bags,
    web_facts_from_dict,
    web_relations,
)
from kn_lens.models.encoder import EncoderFamily
from kn_lens.prompts import encode

# --- T1: masking the tail ---------------------------------------------------------------------


def test_tail_inside_head_is_protected():
    s = "Paris Hilton was born in New York , not in Paris ."
    expected = "Paris Hilton was born in New York , not in [MASK] ."
    assert mask_tail(s, "Paris Hilton", "Paris") == expected
    # the only occurrence of the tail is inside the head -> not maskable
    with pytest.raises(MaskError) as e:
        mask_tail("Paris Hilton is an American media personality .", "Paris Hilton", "Paris")
    assert e.value.reason == "tail_not_found"


def test_tail_is_matched_as_whole_word_first_occurrence():
    s = "A Parisian studio moved to Paris, then back to Paris."
    expected = "A Parisian studio moved to [MASK], then back to Paris."
    assert mask_tail(s, "studio", "Paris") == expected
    # hyphenated compound: the tail is a whole word before the hyphen
    assert mask_tail("a Paris-based firm", "firm", "Paris") == "a [MASK]-based firm"


@pytest.mark.parametrize(
    "tail, sentence, expected",
    [
        ("C++", "Bob wrote C code, then C++ code.", "Bob wrote C code, then [MASK] code."),
        ("St. Louis", "Bob left StX Louis for St. Louis.", "Bob left StX Louis for [MASK]."),
        ("Washington (state)", "Bob lives in Washington (state) now.", "Bob lives in [MASK] now."),
        ("$", "Bob paid in $ and €.", "Bob paid in [MASK] and €."),
        ("a+b", "Bob likes aab and a+b.", "Bob likes aab and [MASK]."),
        ("Jr.", "Bob Jr. is here.", "Bob [MASK] is here."),
    ],
)
def test_tail_with_regex_metacharacters(tail, sentence, expected):
    out = mask_tail(sentence, "Bob", tail)
    assert out == expected
    assert out.count(MASK) == 1


def test_head_with_regex_metacharacters_is_protected():
    head = "Prince (musician)"
    s = "Prince (musician) was a musician from Minneapolis ."
    assert mask_tail(s, head, "musician") == "Prince (musician) was a [MASK] from Minneapolis ."


def test_unmaskable_sentences_raise_with_reason():
    with pytest.raises(MaskError) as e:
        mask_tail("Alice was born in Paris, not [MASK].", "Alice", "Paris")
    assert e.value.reason == "has_mask"
    with pytest.raises(MaskError) as e:
        mask_tail("", "Alice", "Paris")
    assert e.value.reason == "not_text"
    with pytest.raises(MaskError) as e:
        mask_random_word("Alice .", random.Random(0), protect="Alice")
    assert e.value.reason == "no_word"


# --- T2/T3: masking a random word -------------------------------------------------------------


def test_random_word_never_masks_head_and_stays_in_first_words():
    head = "Anna Maria Smith"
    words = [f"w{i}" for i in range(80)]
    s = f"{head} , " + " ".join(words) + f" and {head} ."
    masked_words = set()
    for seed in range(200):
        out = mask_random_word(s, random.Random(seed), first_words=50, protect=head)
        assert out.count(MASK) == 1
        assert out.count(head) == 2
        toks = out.split()
        i = toks.index(MASK)
        assert i < 50
        masked_words.add(s.split()[i])
    assert not masked_words & {"Anna", "Maria", "Smith", ","}
    assert len(masked_words) > 20  # really random over the allowed words


def test_only_the_word_core_is_masked():
    spans = maskable_words('Victoria), "ok" –', first_words=50)
    s = 'Victoria), "ok" –'
    assert [s[a:b] for a, b in spans] == ["Victoria", "ok"]


# --- building the three types -----------------------------------------------------------------


def _toy_web():
    web = {
        "P19": [
            {
                "th_bags": [
                    "Alice was born in Paris .",
                    "Alice never saw it .",
                    "Alice , [MASK] Paris .",
                    "Alice , from Paris , is a doctor .",
                ],
                "h_bags": ["Alice is a doctor .", "Alice .", "Alice works as a lawyer ."],
            },
            {"th_bags": ["Bob was born in London ."], "h_bags": []},
            {"th_bags": [], "h_bags": ["Kal is here ."]},
        ]
    }
    qp = {"P19": [["Alice", "Paris"], ["Bob", "London"], ["Kal", "Rome"]]}
    return web_facts_from_dict(web, qp)


def test_build_counts_every_sentence():
    wf = _toy_web()
    ps = build_web_prompts(wf, seed=0)
    c = ps.counts()
    assert c["T1"] == {"built": 3, "tail_not_found": 1, "has_mask": 1}
    assert c["T2"] == {"built": 3, "no_word": 1}
    alice = ps.by_key()["P19/0"]
    assert alice.t1 == ("Alice was born in [MASK] .", "Alice , from [MASK] , is a doctor .")
    assert len(alice.t3) == len(alice.t1) == 2
    assert len(ps.by_key()["P19/1"].t3) == 1
    assert ps.by_key()["P19/2"].t3 == ()  # no T1 prompt -> no T3 either
    for fp in ps.facts:
        for p in (*fp.t1, *fp.t2, *fp.t3):
            assert p.count(MASK) == 1
    # every input sentence is either built or counted
    n_th = sum(len(f.th_bags) for f in wf["P19"])
    assert c["T1"]["built"] + sum(v for k, v in c["T1"].items() if k != "built") == n_th


def test_build_is_reproducible_and_seeded():
    wf = _toy_web()
    a = build_web_prompts(wf, seed=3)
    b = build_web_prompts(wf, seed=3)
    assert a.facts == b.facts
    # a fact's prompts do not depend on which other facts are built with it
    only = build_web_prompts(wf, keys=["P19/0"], seed=3)
    assert only.facts[0] == a.by_key()["P19/0"]
    outs = {build_web_prompts(wf, seed=s).by_key()["P19/0"].t2 for s in range(10)}
    assert len(outs) > 1
    with pytest.raises(ValueError, match="P19/9"):
        build_web_prompts(wf, keys=["P19/9"])


def test_from_dict_rejects_misaligned_input():
    with pytest.raises(ValueError, match="P19"):
        web_facts_from_dict({"P19": [{"th_bags": [], "h_bags": []}]}, {"P19": []})
    with pytest.raises(ValueError, match="P19"):
        web_facts_from_dict({"P19": [{"th_bags": [], "h_bags": []}]}, {})
    with pytest.raises(ValueError, match="P19/0"):
        web_facts_from_dict({"P19": [{"th_bags": "x", "h_bags": []}]}, {"P19": [["a", "b"]]})


def test_match_bags_detects_order_mismatch():
    from kn_lens.data import Fact, FactBag

    wf = _toy_web()
    fact = Fact("Bob", "P19", "born in", "N-1", "London")
    good = FactBag(fact, ("Bob born in [MASK] .",), index=1)
    assert match_bags(wf, [good])[0][1].subject == "Bob"
    bad = FactBag(fact, ("Bob born in [MASK] .",), index=0)
    with pytest.raises(ValueError, match="P19/0"):
        match_bags(wf, [bad])


# --- truncation -------------------------------------------------------------------------------


def test_mask_beyond_512_tokens_stays_in_window(tiny_model):
    words = ["the"] * 600 + ["Paris"] + ["the"] * 150
    s = "Alice " + " ".join(words) + " ."
    p = mask_tail(s, "Alice", "Paris")
    tok = tiny_model.tokenizer
    enc = encode(tiny_model, [p], max_tokens=512)
    assert enc.tokens.shape[1] == 512
    assert int(enc.tokens[0, enc.mask_pos[0]]) == tok.mask_token_id
    assert int(enc.tokens[0, 0]) == tok.cls_token_id and int(enc.tokens[0, -1]) == tok.sep_token_id
    # the encoder family's encode also respects the model's context (128 for the tiny model)
    enc_w = EncoderFamily().encode(tiny_model, [p], max_tokens=512)
    assert enc_w.tokens.shape[1] == min(512, tiny_model.cfg.n_ctx)
    assert int(enc_w.tokens[0, enc_w.mask_pos[0]]) == tok.mask_token_id


# --- the shared Bing data ---------------------------------------------------------------------


def test_shared_bing_data_aligns_with_pararel(shared_data):
    from kn_lens.data import load_pararel

    distant = shared_data / "bing_distant"
    rels = ["P19", "P106"]
    wf = load_web_facts(distant, relations=rels)
    bags = load_pararel(shared_data / "lama", shared_data / "pararel" / "patterns", relations=rels)
    for rel in rels:
        rel_bags = [b for b in bags if b.relation == rel]
        assert len(wf[rel]) == len(rel_bags)
        n = 50
        pairs = match_bags(wf, rel_bags[:n])  # raises on any subject/object disagreement
        assert len(pairs) == n
        assert all(b.index == w.index and b.subject == w.subject for b, w in pairs)
    assert len(wf["P19"]) == 944 and len(wf["P106"]) == 958
    keys = [f"P19/{i}" for i in range(20)]
    ps = build_web_prompts(wf, keys=keys, seed=0)
    c = ps.counts()
    n_th = sum(len(wf["P19"][i].th_bags) for i in range(20))
    n_h = sum(len(wf["P19"][i].h_bags) for i in range(20))
    assert sum(c["T1"].values()) == n_th
    assert sum(c["T2"].values()) == n_h
    assert c["T1"]["built"] >= 0.95 * n_th
    assert c["T3"]["built"] == c["T1"]["built"]
    assert ps.facts[0].subject == "Allan Peiper" and ps.facts[0].t1[0].count(MASK) == 1
    assert "Alexandra" not in ps.facts[0].t1[0].split(MASK)[0]  # first occurrence masked
    with pytest.raises(ValueError, match="P999"):
        load_web_facts(distant, relations=["P999"])


def test_web_relations_lists_the_web_files_of_a_folder(tmp_path):
    for name in ("final_distant_allbags_P19_new.json", "final_distant_allbags_P1376_new.json"):
        (tmp_path / name).write_text("[]")
    (tmp_path / "final_distant_allbags_P19.json").write_text("[]")  # not the paper's name
    (tmp_path / "notes.txt").write_text("")
    assert web_relations(tmp_path) == ["P1376", "P19"]
    assert web_relations(tmp_path / "empty") == []


def test_bad_web_json_names_file_and_line(tmp_path):
    (tmp_path / "final_distant_allbags_P19_new.json").write_text('[\n{"a": 1},\n{oops}\n]')
    qp = tmp_path / "query_pairs.json"
    qp.write_text("{}")
    with pytest.raises(DataError, match=r"final_distant_allbags_P19_new.json, line 3: not valid"):
        load_web_facts(tmp_path, qp)


def test_malformed_web_entry_names_the_file_and_fact(tmp_path):
    web = tmp_path / "final_distant_allbags_P19_new.json"
    web.write_text('[{"th_bags": ["a b"], "h_bags": []}, {"th_bags": "not a list"}]')
    qp = tmp_path / "query_pairs.json"
    qp.write_text('{"P19": [["A", "B"], ["C", "D"]]}')
    with pytest.raises(DataError) as err:
        load_web_facts(tmp_path)
    assert str(err.value) == (
        f"{web} (query pairs {qp}): P19/1: expected an object with list fields th_bags, h_bags"
    )
    qp.write_text('[["A", "B"]]')
    with pytest.raises(DataError, match=r"query_pairs\.json: expected a JSON object"):
        load_web_facts(tmp_path)
    qp.write_text('{"P19": [["A", "B"]]}')
    with pytest.raises(DataError, match=r"P19_new\.json .*2 web bags but 1 query pairs"):
        load_web_facts(tmp_path)
