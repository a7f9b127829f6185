"""What the default model trains on: its configuration, its report, and the fact world's
sentences as masked-LM batches (pools of tokenised sentences and the sampler that mixes them).

Used by :mod:`kn_lens.training`; see there for how the default model is trained.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from kn_lens.data.facts import MASK
from kn_lens.data.world import World
from kn_lens.wordpiece import SPECIAL_TOKENS

__all__ = ["Pool", "Sampler", "TrainConfig", "TrainReport", "build_pools", "encode_sentences"]


@dataclass(frozen=True)
class TrainConfig:
    """Model shape and training schedule of the default model.

    ``stop_acc``: stop as soon as top-1 accuracy on ``eval_prompts`` sampled training prompts
    (checked every ``eval_every`` steps) reaches it. ``p_object_mask``: chance that a fact
    sentence's object is masked (on top of the ordinary ``mlm_prob`` masking). ``mix``: shares of
    template sentences, web sentences and filler in a batch.
    """

    seed: int = 0
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    d_mlp: int = 1024
    max_len: int = 128
    dropout: float = 0.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 20000
    max_minutes: float = 35.0
    eval_every: int = 200
    eval_prompts: int = 800
    stop_acc: float = 0.88
    mlm_prob: float = 0.15
    p_object_mask: float = 1.0
    extra_object_weight: float = 0.3
    mix: tuple[float, float, float] = (0.8, 0.1, 0.1)
    threads: int | None = 1
    focus_share: float = 0.1
    focus_steps: int = 400

    def replace(self, **kw: Any) -> TrainConfig:
        return dataclasses.replace(self, **kw)


@dataclass
class TrainReport:
    """What a training run did and how the model scored (also written as ``train_report.json``)."""

    config: dict[str, Any]
    world: dict[str, Any]
    steps: int
    seconds: float  # wall clock, tokenizer + training (not the final evaluation)
    stopped_early: bool
    loss_history: list[tuple[int, float]]
    eval_history: list[tuple[int, float, float]]  # (step, sampled train acc, mean gold p)
    train_acc: float = math.nan
    held_out_acc: float = math.nan
    mean_gold_p: float = math.nan
    held_out_mean_gold_p: float = math.nan
    filler_mlm_loss: float = math.nan
    vocab_size: int = 0
    n_params: int = 0
    per_relation: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_seconds: float = math.nan  # CPU time of this process over the same span

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_line(self) -> str:
        return (
            f"steps {self.steps} ({self.seconds / 60:.1f} min, "
            f"early stop {self.stopped_early}); "
            f"train acc {self.train_acc:.3f}, held-out acc {self.held_out_acc:.3f}, "
            f"mean gold p {self.mean_gold_p:.3f}, filler MLM loss {self.filler_mlm_loss:.3f}"
        )


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """Token-id sequences of one kind, their object positions and sampling weights."""

    ids: list[list[int]] = field(default_factory=list)
    obj_pos: list[list[int]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    subjects: list[str | None] = field(default_factory=list)

    def add(self, ids: list[int], obj_pos: list[int], weight: float, subject: str | None) -> None:
        self.ids.append(ids)
        self.obj_pos.append(obj_pos)
        self.weights.append(weight)
        self.subjects.append(subject)


def encode_sentences(tokenizer: Any, sentences: Sequence[str], max_len: int) -> list[list[int]]:
    enc = tokenizer(list(sentences), add_special_tokens=True, truncation=True, max_length=max_len)[
        "input_ids"
    ]
    return [list(x) for x in enc]


def build_pools(world: World, tokenizer: Any, config: TrainConfig) -> dict[str, Pool]:
    """The training sentences: ``"template"`` (training templates, plus N-M second objects),
    ``"web"`` (the training part of each fact's T1 and T2 sentences) and ``"filler"``."""
    pools = {"template": Pool(), "web": Pool(), "filler": Pool()}
    obj_id = {o: tokenizer.convert_tokens_to_ids(o) for o in world.objects}
    for _rel, extra in world.extra_objects.items():
        for o in extra:
            obj_id.setdefault(o, tokenizer.convert_tokens_to_ids(o))

    def add(
        pool: Pool,
        sentences: list[str],
        objs: Sequence[str | None],
        weights: list[float],
        subjects: Sequence[str | None],
    ) -> None:
        for ids, o, w, s in zip(
            encode_sentences(tokenizer, sentences, config.max_len),
            objs,
            weights,
            subjects,
            strict=False,
        ):
            pos = [i for i, t in enumerate(ids) if o is not None and t == obj_id[o]]
            pool.add(ids, pos, w, s)

    objs: list[str | None]
    sents, objs, ws, subs = [], [], [], []
    for bag, w in zip(world.bags, world.weights, strict=False):
        spec = world.relation(bag.relation)
        k = len(spec.train_templates)
        for p in bag.prompts:
            sents.append(p.replace(MASK, bag.object))
            objs.append(bag.object)
            ws.append(w / k)
            subs.append(bag.subject)
        for o in world.extra_objects.get((bag.relation, bag.subject), ()):
            for t in spec.train_templates:
                sents.append(t.replace("[X]", bag.subject).replace("[Y]", o))
                objs.append(o)
                ws.append(w * config.extra_object_weight / k)
                subs.append(bag.subject)
    add(pools["template"], sents, objs, ws, subs)
    sents, objs, ws, subs = [], [], [], []
    n = world.n_train_web
    for bag, w in zip(world.bags, world.weights, strict=False):
        d = world.web[bag.relation][bag.index]
        for s in d["th_bags"][:n]:
            sents.append(s)
            objs.append(bag.object)
            ws.append(w / max(1, n))
            subs.append(bag.subject)
        for s in d["h_bags"][:n]:
            sents.append(s)
            objs.append(None)
            ws.append(w / max(1, n))
            subs.append(bag.subject)
    add(pools["web"], sents, objs, ws, subs)
    nf = len(world.filler)
    add(pools["filler"], list(world.filler), [None] * nf, [1.0] * nf, [None] * nf)
    return pools


class Sampler:
    """Draws masked MLM batches from the pools (deterministic for a seed)."""

    def __init__(self, pools: dict[str, Pool], tokenizer: Any, config: TrainConfig) -> None:
        self.pools = [p for p in pools.values()]
        self.mix = list(config.mix)
        self.cum = [list(_cumsum(p.weights)) for p in self.pools]
        self.rng = random.Random(config.seed + 1)
        # Curriculum: the first ``focus_steps`` steps see only a few subjects' facts (a short
        # plateau: the model forms its subject -> attribute circuit on few individuals first).
        subjects = sorted({s for p in self.pools for s in p.subjects if s is not None})
        n_focus = max(1, round(config.focus_share * len(subjects)))
        focus = set(random.Random(config.seed + 3).sample(subjects, n_focus))
        self.focus_cum = [
            list(
                _cumsum(
                    [
                        w if s is None or s in focus else 0.0
                        for w, s in zip(p.weights, p.subjects, strict=False)
                    ]
                )
            )
            for p in self.pools
        ]
        self.step = 0
        self.cfg = config
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        self.special = set(tokenizer.all_special_ids)
        self.vocab_size = len(tokenizer)

    def batch(
        self,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """``(input_ids, attention_mask, labels)``; labels are -100 where nothing is predicted."""
        rng, cfg = self.rng, self.cfg
        # One kind per batch: similar lengths, little padding.
        k = rng.choices(range(len(self.pools)), weights=self.mix, k=1)[0]
        pool = self.pools[k]
        cum = self.focus_cum[k] if self.step < cfg.focus_steps else self.cum[k]
        self.step += 1
        picks = rng.choices(range(len(pool.ids)), cum_weights=cum, k=cfg.batch_size)
        rows = [(pool.ids[i], pool.obj_pos[i]) for i in picks]
        width = max(len(r[0]) for r in rows)
        inp = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (ids, obj_pos) in enumerate(rows):
            x = list(ids)
            y = [-100] * len(ids)
            forced = {p for p in obj_pos if rng.random() < cfg.p_object_mask}
            for p in forced:
                y[p], x[p] = ids[p], self.mask_id
            for p, t in enumerate(ids):
                if p in forced or t in self.special or rng.random() >= cfg.mlm_prob:
                    continue
                y[p] = t
                r = rng.random()
                if r < 0.8:
                    x[p] = self.mask_id
                elif r < 0.9:
                    x[p] = rng.randrange(len(SPECIAL_TOKENS), self.vocab_size)
            if all(v == -100 for v in y):  # always predict something
                cand = [p for p, t in enumerate(ids) if t not in self.special]
                p = rng.choice(cand)
                y[p], x[p] = ids[p], self.mask_id
            inp[b, : len(x)] = torch.tensor(x)
            lab[b, : len(y)] = torch.tensor(y)
            att[b, : len(x)] = 1
        return inp, att, lab


def _cumsum(xs: Sequence[float]) -> list[float]:
    out, s = [], 0.0
    for x in xs:
        s += x
        out.append(s)
    return out
