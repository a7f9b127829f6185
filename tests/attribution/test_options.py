"""The attribution options (grad x act, baselines, objectives, contrasts, dtype, several facts per
pass) against an independent plain reference on the Hugging Face models themselves.

The reference knows nothing of kn_lens or TransformerLens: a forward hook on the Hugging Face MLP
activation module (BERT: ``bert.encoder.layer[l].intermediate``; GPT-2:
``transformer.h[l].mlp.act``, both TransformerLens' ``blocks.{l}.mlp.hook_post``) replaces the
activation at the read position by a leaf tensor; one unpadded prompt, one layer and one point at
a time, each its own forward and backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import kn_lens
from kn_lens.attribution import attribute, attribute_facts
from kn_lens.prompts import encode

from ..models.test_decoder_hf_reference import save_word_gpt2

STEPS = 4


class Reference:
    """A Hugging Face model with one prompt: its tokens, read position and answers."""

    def __init__(self, hf: Any, act: Callable[[int], torch.nn.Module], tokens: list[int]) -> None:
        self.hf, self.act, self.tokens = hf, act, torch.tensor([tokens])

    def _run(self, layer: int, read: int, value: torch.Tensor | None) -> tuple[Any, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}

        def hook(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor:
            state["clean"] = out[0, read].detach().clone()
            if value is None:
                return out
            out = out.clone()
            out[0, read] = value
            return out

        handle = self.act(layer).register_forward_hook(hook)
        try:
            logits = self.hf(self.tokens).logits[0]
        finally:
            handle.remove()
        return logits, state["clean"]

    def scores(
        self,
        layer: int,
        read: int,
        objective: Callable[[torch.Tensor], torch.Tensor],
        points: list[float],
        base: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(a - b) * mean over points alpha of d objective / da at b + alpha (a - b)``."""
        with torch.no_grad():
            _, a = self._run(layer, read, None)
        b = torch.zeros_like(a) if base is None else base
        total = torch.zeros_like(a)
        for alpha in points:
            leaf = (b + alpha * (a - b)).requires_grad_(True)
            logits, _ = self._run(layer, read, leaf)
            (g,) = torch.autograd.grad(objective(logits), leaf)
            total += g
        return (a - b) * total / len(points)


def logprob_of(read: int, answer: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(answer) teacher forced from ``read`` on."""
    return lambda logits: sum(logits[read + k].log_softmax(-1)[t] for k, t in enumerate(answer))  # type: ignore[return-value]


def combine(
    terms: list[Callable[[torch.Tensor], torch.Tensor]], prob: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(answer) - mean_j f(contrast_j)`` with ``f`` = exp (prob) or identity (logprob)."""
    f = torch.exp if prob else (lambda x: x)

    def objective(logits: torch.Tensor) -> torch.Tensor:
        first = f(terms[0](logits))
        rest = [f(t(logits)) for t in terms[1:]]
        return first - sum(rest) / len(rest) if rest else first

    return objective


# --- the two models: a Hugging Face BERT and a GPT-2 -------------------------------------------


@pytest.fixture(scope="module")
def bert(tiny_ckpt: Path) -> dict[str, Any]:
    from transformers import BertForMaskedLM

    model = kn_lens.load_model(tiny_ckpt, device="cpu", dtype=torch.float64)
    hf = BertForMaskedLM.from_pretrained(tiny_ckpt, dtype=torch.float64).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    vocab = model.tokenizer.get_vocab()
    prompts = ["Paris is the capital of [MASK] .", "the capital of [MASK] is Paris ."]
    enc = encode(model, prompts, device="cpu")
    cases = []
    for i in range(len(prompts)):
        n = int(enc.attention_mask[i].sum())
        tokens = enc.tokens[i, :n].tolist()
        ref = Reference(hf, lambda lay: hf.bert.encoder.layer[lay].intermediate, tokens)
        cases.append((ref, int(enc.mask_pos[i])))
    answers = {w: [vocab[w]] for w in ("French", "German", "Italian")}
    return dict(model=model, prompts=prompts, cases=cases, answers=answers)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import GPT2LMHeadModel

    folder = save_word_gpt2(tmp_path_factory.mktemp("options_gpt2"))
    model = kn_lens.load_model(folder, device="cpu", dtype=torch.float64)
    hf = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float64).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    vocab = model.tokenizer.get_vocab()
    prompts = ["alpha beta gamma", "gamma alpha beta beta"]
    answers = {a: [vocab[w] for w in a.split()] for a in ("delta epsilon", "zeta", "eta theta")}
    cases = []
    for p in prompts:
        ids = model.to_tokens(p)[0].tolist()
        cases.append((ids, len(ids) - 1))
    return dict(model=model, hf=hf, prompts=prompts, cases=cases, answers=answers)


def reference(
    setup: dict[str, Any],
    answers: list[str],
    *,
    prob: bool,
    points: list[float],
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[prompt, layer, d_mlp]`` from the plain reference."""
    model = setup["model"]
    out = []
    for case in setup["cases"]:
        if "hf" in setup:  # a decoder: the fed tokens depend on the answer
            ids, read = case
            per_layer = []
            for layer in range(model.cfg.n_layers):
                total = 0
                for j, name in enumerate(answers):
                    ans = setup["answers"][name]
                    ref = Reference(
                        setup["hf"],
                        lambda lay: setup["hf"].transformer.h[lay].mlp.act,
                        ids + ans[:-1],
                    )
                    w = 1.0 if j == 0 else -1.0 / (len(answers) - 1)
                    obj = combine([logprob_of(read, ans)], prob)
                    b = None if base is None else base[layer]
                    total = total + w * ref.scores(layer, read, obj, points, b)
                per_layer.append(total)
        else:
            ref, read = case
            obj = combine([logprob_of(read, setup["answers"][a]) for a in answers], prob)
            per_layer = [
                ref.scores(layer, read, obj, points, None if base is None else base[layer])
                for layer in range(model.cfg.n_layers)
            ]
        out.append(torch.stack(per_layer))
    return torch.stack(out)


def close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-6) -> None:
    scale = ref.abs().max().item()
    assert scale > 1e-8, "the reference is all ~zero"
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    assert diff <= rel * scale, (diff, scale)


FAMILIES = ["bert", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["prob", "logprob"])
def test_grad_x_act_equals_reference(family, objective, request):
    setup = request.getfixturevalue(family)
    target = next(iter(setup["answers"]))
    got = attribute(
        setup["model"], setup["prompts"], target, method="grad_x_act", objective=objective
    )
    close(got, reference(setup, [target], prob=objective == "prob", points=[1.0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_ig_from_a_baseline_tensor_equals_reference(family, request):
    setup = request.getfixturevalue(family)
    model = setup["model"]
    target = next(iter(setup["answers"]))
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(model.cfg.n_layers, model.cfg.d_mlp, generator=gen, dtype=torch.float64)
    got = attribute(model, setup["prompts"], target, steps=STEPS, baseline=base)
    points = [k / STEPS for k in range(STEPS)]
    close(got, reference(setup, [target], prob=True, points=points, base=base))
    # one row per scored layer works the same
    sub = attribute(model, setup["prompts"], target, steps=STEPS, baseline=base[[1]], layers=[1])
    torch.testing.assert_close(sub, got[:, [1]], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["prob", "logprob"])
def test_contrast_is_the_difference_of_separate_attributions(family, objective, request):
    setup = request.getfixturevalue(family)
    model, prompts = setup["model"], setup["prompts"]
    target, *others = list(setup["answers"])
    got = attribute(model, prompts, target, steps=STEPS, objective=objective, contrast=others)
    each = [attribute(model, prompts, a, steps=STEPS, objective=objective) for a in others]
    expected = attribute(model, prompts, target, steps=STEPS, objective=objective) - sum(
        each
    ) / len(each)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)
    points = [k / STEPS for k in range(STEPS)]
    close(got, reference(setup, [target, *others], prob=objective == "prob", points=points))


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_baseline_is_the_mean_activation(family, request):
    setup = request.getfixturevalue(family)
    model, prompts = setup["model"], setup["prompts"]
    target = next(iter(setup["answers"]))
    acts = attribute(model, prompts, target, method="activation")
    got = attribute(model, prompts, target, steps=STEPS, baseline="mean")
    expected = attribute(model, prompts, target, steps=STEPS, baseline=acts.mean(0))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # completeness from the mean: each layer's scores add up to about p(a) - p(mean)
    assert got.abs().max() > 0


def test_several_facts_in_one_pass_equal_separate_calls(gpt2):
    model = gpt2["model"]
    facts = [(gpt2["prompts"], "delta epsilon"), (gpt2["prompts"][:1], "zeta")]
    together = attribute_facts(model, facts, steps=STEPS, batch_size=64)
    for (prompts, answer), got in zip(facts, together, strict=True):
        alone = attribute(model, prompts, answer, steps=STEPS)
        torch.testing.assert_close(got, alone, rtol=1e-9, atol=1e-12)


def test_decoder_bfloat16_tracks_float32(gpt2):
    from kn_lens.models import load_model

    model32 = gpt2["model"].to(torch.float32)
    try:
        full = attribute(model32, gpt2["prompts"], "delta epsilon", steps=STEPS)
        half = attribute(model32, gpt2["prompts"], "delta epsilon", steps=STEPS, dtype="bfloat16")
    finally:
        gpt2["model"].to(torch.float64)
    assert half.dtype == torch.float32
    r = torch.corrcoef(torch.stack([full.flatten(), half.flatten()]))[0, 1].item()
    assert r >= 0.99, r
    del load_model


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="gradient"), "unknown method"),
        (dict(objective="logit"), "unknown objective"),
        (dict(baseline="uniform"), "unknown baseline"),
        (dict(baseline=torch.zeros(2, 7)), "shape"),
        (dict(baseline=torch.zeros(5, 64)), "one row per scored layer"),
        (dict(contrast=[]), "contrast is empty"),
        (dict(steps=0), "steps"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_bad_options_are_named(bert, kwargs, match):
    with pytest.raises(kn_lens.KnLensError, match=match):
        attribute(bert["model"], bert["prompts"], "French", **kwargs)


def test_a_token_id_is_a_one_token_answer(gpt2):
    model, prompts = gpt2["model"], gpt2["prompts"]
    (zeta,) = gpt2["answers"]["zeta"]
    by_id = attribute(model, prompts, zeta, steps=2)
    torch.testing.assert_close(by_id, attribute(model, prompts, [zeta], steps=2))
    torch.testing.assert_close(by_id, attribute(model, prompts, "zeta", steps=2))
