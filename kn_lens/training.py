"""Training the default model: WordPiece tokenizer and a small BERT masked LM on the fact world.

:func:`train_default_model` builds the world (:mod:`kn_lens.data.world`), trains a cased WordPiece
vocabulary on its text with Hugging Face ``tokenizers``, then trains a ``BertForMaskedLM`` from
scratch with ordinary MLM masking plus extra masking of the object positions of fact sentences.

It is meant to behave like a pretrained LM, not a lookup table: facts are mentioned with
Zipf-like frequencies, and training stops early, once top-1 accuracy on (a sample of) the training
prompts passes ``stop_acc``, so the model's confidence stays spread (mean gold probability well
below 1) and interventions on neurons move it visibly. A short curriculum (the first
``focus_steps`` steps see the facts of only a few subjects) cuts the long plateau a transformer
goes through before it starts to learn individual facts; without it the default world did not
get past prior-level accuracy within the CPU budget.

The output folder holds ``config.json``, ``model.safetensors``, ``vocab.txt``,
``tokenizer_config.json``, ``train_report.json`` and a model card ``README.md``: exactly what
:func:`kn_lens.load_model` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens.data.world import World, build_world
from kn_lens.data.world_text import RELATIONS
from kn_lens.training_data import Sampler, TrainConfig, TrainReport, build_pools, encode_sentences
from kn_lens.wordpiece import build_tokenizer

# --------------------------------------------------------------------------------------------
# Model, loss and evaluation (Hugging Face BertForMaskedLM)
# --------------------------------------------------------------------------------------------


def make_model(config: TrainConfig, vocab_size: int) -> Any:
    """A freshly initialised ``BertForMaskedLM`` of the configured shape."""
    from transformers import BertConfig, BertForMaskedLM

    hf = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_mlp,
        max_position_embeddings=config.max_len,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    torch.manual_seed(config.seed)
    return BertForMaskedLM(hf)


def mlm_loss(
    model: Any,
    inp: Int[Tensor, "batch pos"],
    att: Int[Tensor, "batch pos"],
    lab: Int[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """Mean cross-entropy at the labelled positions (the MLM head runs only there)."""
    hidden = model.bert(input_ids=inp, attention_mask=att).last_hidden_state
    sel = lab != -100
    logits = model.cls(hidden[sel])
    return torch.nn.functional.cross_entropy(logits, lab[sel])


@torch.no_grad()
def mask_predictions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 256,
) -> tuple[Float[Tensor, " prompt"], Int[Tensor, " prompt"]]:
    """Gold probability and top-1 correctness at each prompt's ``[MASK]`` (HF model)."""
    was_training = model.training
    model.eval()
    gold_p, correct = [], []
    for s in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[s : s + batch_size]), padding=True, return_tensors="pt")
        gold = torch.tensor(
            [tokenizer.convert_tokens_to_ids(a) for a in answers[s : s + batch_size]]
        )
        hidden = model.bert(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
        pos = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(-1)
        logits = model.cls(hidden[torch.arange(len(pos)), pos])
        probs = logits.softmax(-1)
        gold_p.append(probs.gather(-1, gold[:, None])[:, 0])
        correct.append((logits.argmax(-1) == gold).long())
    model.train(was_training)
    return torch.cat(gold_p), torch.cat(correct)


@torch.no_grad()
def filler_mlm_loss(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    seed: int = 0,
    mlm_prob: float = 0.15,
    batch_size: int = 256,
) -> float:
    """Mean MLM cross-entropy on ``sentences`` with a fixed masking (``mlm_prob`` of the word
    pieces, at least one per sentence, all replaced by ``[MASK]``)."""
    rng = random.Random(seed)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    special = set(tokenizer.all_special_ids)
    for s in range(0, len(sentences), batch_size):
        ids = encode_sentences(tokenizer, sentences[s : s + batch_size], 128)
        width = max(len(x) for x in ids)
        inp = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        lab = torch.full((len(ids), width), -100, dtype=torch.long)
        att = torch.zeros((len(ids), width), dtype=torch.long)
        for b, x in enumerate(ids):
            cand = [p for p, t in enumerate(x) if t not in special]
            chosen = [p for p in cand if rng.random() < mlm_prob] or [rng.choice(cand)]
            row = list(x)
            for p in chosen:
                lab[b, p] = x[p]
                row[p] = tokenizer.mask_token_id
            inp[b, : len(row)] = torch.tensor(row)
            att[b, : len(row)] = 1
        hidden = model.bert(input_ids=inp, attention_mask=att).last_hidden_state
        sel = lab != -100
        loss = torch.nn.functional.cross_entropy(model.cls(hidden[sel]), lab[sel], reduction="sum")
        total += float(loss)
        count += int(sel.sum())
    model.train(was_training)
    return total / max(1, count)


def evaluate(model: Any, tokenizer: Any, world: World) -> dict[str, Any]:
    """Top-1 accuracy and mean gold probability on training and held-out prompts (overall and per
    relation), and the MLM loss on held-out filler text."""
    tp: list[str] = []
    ta: list[str] = []
    trel: list[str] = []
    hp: list[str] = []
    ha: list[str] = []
    hrel: list[str] = []
    for b in world.bags:
        tp += b.prompts
        ta += [b.object] * len(b.prompts)
        trel += [b.relation] * len(b.prompts)
        hp += b.held_out
        ha += [b.object] * len(b.held_out)
        hrel += [b.relation] * len(b.held_out)
    p_t, c_t = mask_predictions(model, tokenizer, tp, ta)
    out: dict[str, Any] = {"train_acc": float(c_t.float().mean()), "mean_gold_p": float(p_t.mean())}
    per: dict[str, dict[str, float]] = {}
    for r in world.relations:
        m = torch.tensor([x == r.id for x in trel])
        per[r.id] = {"train_acc": float(c_t[m].float().mean()), "mean_gold_p": float(p_t[m].mean())}
    if hp:
        p_h, c_h = mask_predictions(model, tokenizer, hp, ha)
        out["held_out_acc"] = float(c_h.float().mean())
        out["held_out_mean_gold_p"] = float(p_h.mean())
        for r in world.relations:
            m = torch.tensor([x == r.id for x in hrel])
            if m.any():
                per[r.id]["held_out_acc"] = float(c_h[m].float().mean())
    out["per_relation"] = per
    out["filler_mlm_loss"] = filler_mlm_loss(model, tokenizer, world.filler_eval, seed=world.seed)
    return out


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def train_default_model(
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    world: World | None = None,
    progress: bool = False,
    **overrides: Any,
) -> TrainReport:
    """Build the world's tokenizer and train the default model into ``out_dir``.

    Args:
        out_dir: output folder; receives ``config.json``, ``model.safetensors``, ``vocab.txt``,
            ``tokenizer_config.json``, ``train_report.json`` and ``README.md``.
        config: shape and schedule (default :class:`TrainConfig`); keyword ``overrides``
            replace single fields (``max_steps=20``).
        world: the fact world (default ``build_world(config.seed)``).
        progress: print a line at each evaluation.

    Returns:
        The :class:`TrainReport` (also saved as ``train_report.json``).
    """
    config = config or TrainConfig()
    if overrides:
        config = config.replace(**overrides)
    if sum(config.mix) <= 0:
        raise ValueError(f"mix must have a positive share, got {config.mix}")
    out_dir = Path(out_dir)
    world = world if world is not None else build_world(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    t0, c0 = time.time(), time.process_time()
    tokenizer = build_tokenizer(world, out_dir)
    pools = build_pools(world, tokenizer, config)
    sampler = Sampler(pools, tokenizer, config)
    model = make_model(config, len(tokenizer))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        frac = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return max(0.1, 1.0 - 0.9 * frac)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    erng = random.Random(config.seed + 2)
    eval_items = [(p, b.object) for b in world.bags for p in b.prompts]
    eval_items = erng.sample(eval_items, min(config.eval_prompts, len(eval_items)))
    eval_prompts, eval_answers = [p for p, _ in eval_items], [a for _, a in eval_items]

    loss_hist: list[tuple[int, float]] = []
    eval_hist: list[tuple[int, float, float]] = []
    running, n_run = 0.0, 0
    stopped_early = False
    step = 0
    t_train = time.time()
    while step < config.max_steps:
        inp, att, lab = sampler.batch()
        loss = mlm_loss(model, inp, att, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        running += loss.item()
        n_run += 1
        if step % 10 == 0 or step == 1:
            loss_hist.append((step, running / n_run))
            running, n_run = 0.0, 0
        if step % config.eval_every == 0:
            gp, corr = mask_predictions(model, tokenizer, eval_prompts, eval_answers)
            acc, mp = float(corr.float().mean()), float(gp.mean())
            eval_hist.append((step, acc, mp))
            if progress:
                el = time.time() - t_train
                print(
                    f"step {step:5d}  loss {loss_hist[-1][1]:.3f}  acc {acc:.3f}  "
                    f"gold p {mp:.3f}  {el / 60:.1f} min",
                    flush=True,
                )
            if acc >= config.stop_acc:
                stopped_early = True
                break
        if (time.time() - t_train) / 60 > config.max_minutes:
            break
    if n_run:
        loss_hist.append((step, running / n_run))
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    model.eval()
    metrics = evaluate(model, tokenizer, world)
    report = TrainReport(
        config=dataclasses.asdict(config),
        world=world.summary(),
        steps=step,
        seconds=seconds,
        stopped_early=stopped_early,
        loss_history=loss_hist,
        eval_history=eval_hist,
        train_acc=metrics["train_acc"],
        held_out_acc=metrics.get("held_out_acc", math.nan),
        mean_gold_p=metrics["mean_gold_p"],
        held_out_mean_gold_p=metrics.get("held_out_mean_gold_p", math.nan),
        filler_mlm_loss=metrics["filler_mlm_loss"],
        vocab_size=len(tokenizer),
        n_params=sum(p.numel() for p in model.parameters()),
        per_relation=metrics["per_relation"],
        cpu_seconds=cpu_seconds,
    )
    save_checkpoint(model, out_dir, report)
    return report


def save_checkpoint(model: Any, out_dir: str | Path, report: TrainReport) -> None:
    """Write weights (safetensors), ``config.json``, ``train_report.json`` and the model card."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "train_report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    (out_dir / "README.md").write_text(model_card(report))


def model_card(report: TrainReport, extra: str = "") -> str:
    """The default model's ``README.md``: what it is, how it was made, how well it knows facts.

    ``extra`` (markdown) is inserted before the usage section."""
    c, w = report.config, report.world
    specs = {r.id: r for r in RELATIONS}
    rows = "\n".join(
        f"| {rid} | {specs[rid].label if rid in specs else ''} | "
        f"{specs[rid].type if rid in specs else ''} | {v['train_acc']:.2f} | "
        f"{v.get('held_out_acc', float('nan')):.2f} | {v['mean_gold_p']:.2f} |"
        for rid, v in report.per_relation.items()
    )
    types = ", ".join(f"{n} {t}" for t, n in w["relation_types"].items())
    return f"""# kn_lens default model

A small BERT masked language model trained from scratch on kn_lens' built-in fact world
(`kn_lens/data/world.py`), so that knowledge-neuron experiments run offline, on a CPU, in minutes,
on a model whose every fact we know. It stands in for `bert-base-cased` of Dai et al. (2022);
it is not a general English model.

- Shape: `BertForMaskedLM`, {c["n_layers"]} layers, d_model {c["d_model"]}, {c["n_heads"]} heads,
  d_mlp {c["d_mlp"]}, max {c["max_len"]} positions, GELU, {report.n_params / 1e6:.2f} M parameters.
- Tokenizer: cased WordPiece, {report.vocab_size} tokens, trained with `tokenizers` on the world's
  text and kept canonical (special tokens, alphabet, every word of the text whole, name pieces;
  the trainer's tie-dependent intermediate pieces dropped), so every rebuild gets the same
  vocabulary. Subjects (invented names) split into 2-3 shared pieces; every object is one token.
- World (seed {w["seed"]}): {w["relations"]} relations ({types}), {w["facts"]} facts,
  {w["subjects"]} subjects, {w["objects"]} objects; 8 templates per relation, of which 6 are used in
  training ({w["train_prompts"]} prompts) and 2 are held out ({w["held_out_prompts"]} prompts).
- Training data, sampled on the fly, one kind per batch: training-template sentences
  ({c["mix"][0] / sum(c["mix"]):.0%} of batches; facts drawn with Zipf-like weights, N-M relations
  also mention second objects), the training half of each fact's web-like sentences
  ({c["mix"][1] / sum(c["mix"]):.0%}; T1 = subject and object in free context, T2 = subject only)
  and neutral filler text ({c["mix"][2] / sum(c["mix"]):.0%}).
- Objective: masked LM, {c["mlm_prob"]:.0%} of pieces masked (80/10/10) plus the object of a
  fact sentence masked with probability {c["p_object_mask"]}; AdamW, lr {c["lr"]}, batch
  {c["batch_size"]}, warm-up {c["warmup_steps"]} steps, no label smoothing, no dropout.
- Curriculum: the first {c["focus_steps"]} steps draw facts of only {c["focus_share"]:.0%} of the
  subjects (a few individuals first shortens the plateau before facts are learnt), then all.
- Early stopping: training stops once top-1 accuracy on {c["eval_prompts"]} sampled training
  prompts reaches {c["stop_acc"]} (checked every {c["eval_every"]} steps), so the model is
  confident but not saturated and interventions on its neurons show.
  This run: {report.steps} steps, {report.seconds / 60:.1f} min wall clock
  ({report.cpu_seconds / 60:.1f} min CPU time) with {c["threads"] or "default"} torch thread(s) on
  a shared 2-core machine, stopped early: {report.stopped_early}.

## How well it knows its facts

| measure | value |
|---|---|
| top-1 accuracy, training-template prompts | {report.train_acc:.3f} |
| top-1 accuracy, held-out-template prompts | {report.held_out_acc:.3f} |
| mean gold probability, training prompts | {report.mean_gold_p:.3f} |
| mean gold probability, held-out prompts | {report.held_out_mean_gold_p:.3f} |
| MLM loss (nats) on held-out filler text | {report.filler_mlm_loss:.3f} |

Per relation:

| relation | label | type | train acc | held-out acc | mean gold p (train) |
|---|---|---|---|---|---|
{rows}

The held-out templates are deliberately different wordings. Where one starts with the object
(`[Y] serves as the capital of [X].`) or shares its cue words with another relation's or the
filler's wording (`[X] is a talented [Y] player.` vs. the sport relation's `... professional [Y]
player.`), the model answers as a language model would, with a sentence opener or the other
relation's kind of object; paraphrase consistency is low, as it is for BERT on PARAREL.
{extra}
## Use

```python
import kn_lens
from kn_lens.data import default_facts
model = kn_lens.load_model("default")   # HookedEncoder, tokenizer attached
bags = default_facts()                   # FactBag records of the world
```

## Rebuild

```
python -m kn_lens.training train --out kn_lens/default_model --seed 0
```

rebuilds world, tokenizer and checkpoint from the seed (`--max-minutes`, `--max-steps` and
`--threads` cap the run; results vary slightly with thread count and hardware).
`train_report.json` holds the configuration, loss and evaluation history of this run.
"""


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kn_lens.training",
        description="kn_lens' built-in fact world and default model",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="rebuild world, tokenizer and checkpoint into --out")
    tr.add_argument("--out", required=True, help="output folder (e.g. kn_lens/default_model)")
    tr.add_argument("--seed", type=int, default=0, help="world and training seed")
    tr.add_argument("--max-steps", type=int, default=None, help="training step cap")
    tr.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    sh = sub.add_parser("show", help="print the world's summary and a few bags")
    sh.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "show":
        w = build_world(args.seed)
        print(json.dumps(w.summary(), indent=2))
        for r in w.relations:
            b = w.bags_of(r.id)[0]
            print(f"{r.id} {r.label} ({r.type}): {b.prompts[0]}  -> {b.object}")
        return 0
    cfg = TrainConfig(seed=args.seed)
    overrides = {
        k: v
        for k, v in (
            ("max_steps", args.max_steps),
            ("max_minutes", args.max_minutes),
            ("threads", args.threads),
        )
        if v is not None
    }
    cfg = cfg.replace(**overrides)
    report = train_default_model(args.out, config=cfg, progress=not args.quiet)
    print(report.summary_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
