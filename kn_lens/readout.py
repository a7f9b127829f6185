"""Reading a fact out of a model of either family: top-1, the answer's probability, perplexity.

Every analysis scores prompts here; the family (:func:`kn_lens.models.family.family_of`) says
where the fact is read (the ``[MASK]``, or the last prompt position) and what the answer's
probability is (the ``[MASK]`` token's, or the product of a decoder's teacher-forced answer tokens).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens.config import PaperConfig
from kn_lens.data.facts import FactBag
from kn_lens.errors import KnLensError
from kn_lens.models.family import BagCheck, family_of


def encode_facts(
    model: Any,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    max_tokens: int | None = None,
) -> Any:
    """``prompts`` (with one answer per prompt, or none) as the model's family encodes them."""
    return family_of(model).encode(model, prompts, answers, max_tokens=max_tokens)


def usable_bags(model: Any, bags: Iterable[FactBag]) -> BagCheck:
    """The bags the model can use, as it reads them (see the family's ``usable_bags``)."""
    return family_of(model).usable_bags(model, list(bags))


def bags_by_relation(model: Any, bags: Iterable[FactBag]) -> dict[str, list[FactBag]]:
    """The usable bags (:func:`usable_bags`), grouped by relation in input order."""
    by_rel: dict[str, list[FactBag]] = defaultdict(list)
    for b in usable_bags(model, bags).kept:
        by_rel[b.relation].append(b)
    return by_rel


def first_token(model: Any, answer: str | int) -> int:
    """The token an answer starts with (an encoder answer is one token)."""
    return family_of(model).first_token(model, answer)


@dataclass
class AnswerScores:
    """Per-prompt reads at the read position.

    Attributes:
        top1: ``[prompt]`` the arg-max next token.
        first_gold: ``[prompt]`` the first token of the gold answer (top-1 correct when equal).
        gold_logp: ``[prompt]`` ``log p(gold answer | prompt)`` (all of a decoder's answer tokens).
        target_logp: ``[prompt]`` log-probability of an extra target token (e.g. the new answer's
            first token) at the read position, or None.
        target_rank: ``[prompt]`` rank of the extra target token (0 = top-1), or None.
    """

    top1: Int[Tensor, " prompt"]
    first_gold: Int[Tensor, " prompt"]
    gold_logp: Float[Tensor, " prompt"]
    target_logp: Float[Tensor, " prompt"] | None = None
    target_rank: Int[Tensor, " prompt"] | None = None

    @property
    def correct(self) -> Tensor:
        """``[prompt]`` bool: the gold answer's first token is top-1."""
        return self.top1 == self.first_gold


def score_prompts(
    model: Any,
    enc: Any,
    target: Int[Tensor, " prompt"] | None = None,
    *,
    batch_size: int = 64,
) -> AnswerScores:
    """Top-1, gold log-probability and (optionally) a target token's log-probability and rank,
    for each prompt of ``enc`` (encoded with answers: :func:`encode_facts`). No autograd; CPU
    tensors."""
    fam = family_of(model)
    n = len(enc)
    if target is not None and target.shape[0] != n:
        raise KnLensError(f"target ids must have one entry per prompt ({n})")
    top1, glp, tlp, trk = [], [], [], []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            idx = list(range(s, min(s + batch_size, n)))
            logits, logp = fam.readout(model, enc.select(idx))
            if logp is None:
                raise KnLensError("these prompts were encoded without answers")
            logits = logits.float().cpu()
            top1.append(logits.argmax(-1))
            glp.append(logp.float().cpu())
            if target is not None:
                t = target[idx][:, None].cpu()
                tl = logits.gather(-1, t)
                tlp.append(logits.log_softmax(-1).gather(-1, t)[:, 0])
                trk.append((logits > tl).sum(-1))
    return AnswerScores(
        torch.cat(top1),
        enc.first_answer_ids.cpu(),
        torch.cat(glp),
        torch.cat(tlp) if target is not None else None,
        torch.cat(trk) if target is not None else None,
    )


def perplexity(gold_logp: Float[Tensor, " prompt"]) -> float:
    """exp(mean negative log-likelihood) of the gold answers (per answer, not per token)."""
    if gold_logp.numel() == 0:
        return float("nan")
    return float(torch.exp(-gold_logp.double().mean()))


#: The study's rule for a fact the model knows: the gold answer's first token is top-1 on at least
#: this share of the fact's prompts (:attr:`kn_lens.config.PaperConfig.known_share`).
KNOWN_SHARE = PaperConfig().known_share


def known_rule(threshold: float = KNOWN_SHARE) -> str:
    """The rule in words (results.json ``meta.known.rule`` and the report)."""
    if threshold <= 0:
        return "every fact counts as known (known_share=0)"
    return f"the gold answer's first token is top-1 on at least {threshold:.0%} of its prompts"


@dataclass
class FactKnowledge:
    """Whether the model knows one fact, by :data:`KNOWN_SHARE`.

    Attributes:
        key: the fact.
        n_prompts: its prompts.
        n_top1: prompts whose top-1 prediction is the gold answer's first token.
        p_answer: mean over its prompts of p(gold answer) (a decoder: all the answer's tokens).
        known: ``n_top1 >= threshold * n_prompts``.
    """

    key: str
    n_prompts: int
    n_top1: int
    p_answer: float
    known: bool

    @property
    def top1_share(self) -> float:
        return self.n_top1 / self.n_prompts if self.n_prompts else 0.0

    def why(self) -> str:
        """Why the fact is left out when the model does not know it (empty when it does)."""
        if self.known:
            return ""
        return (
            f"not known to the model (answer top-1 on {self.n_top1} of {self.n_prompts} "
            f"prompts; mean p(answer) {self.p_answer:.2g})"
        )


def known_facts(
    model: Any,
    bags: Sequence[FactBag],
    *,
    batch_size: int = 64,
    threshold: float = KNOWN_SHARE,
) -> dict[str, FactKnowledge]:
    """Per bag key, whether the model knows the fact (:class:`FactKnowledge`): the ONE place
    that decides it. Every analysis of the pipeline measures only the known facts; ``update``
    picks the facts it edits by the same rule. One forward pass per ``batch_size`` prompts."""
    bags = list(bags)
    if not bags:
        return {}
    prompts = [p for b in bags for p in b.prompts]
    answers = [b.object for b in bags for _ in b.prompts]
    scores = score_prompts(model, encode_facts(model, prompts, answers), batch_size=batch_size)
    correct, p = scores.correct, scores.gold_logp.double().exp()
    out: dict[str, FactKnowledge] = {}
    s = 0
    for b in bags:
        n = len(b.prompts)
        k = int(correct[s : s + n].sum())
        out[b.key] = FactKnowledge(
            b.key, n, k, float(p[s : s + n].mean()) if n else 0.0, n > 0 and k >= threshold * n
        )
        s += n
    return out
