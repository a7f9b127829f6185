"""Benchmark: kn_lens.attribute against the ``knowledge-neurons`` package (EleutherAI), side by
side.

Both score the same prompts with integrated gradients (20 steps, every layer) on the same random
weights: kn_lens on a TransformerLens ``HookedEncoder`` loaded through ``kn_lens.load_model``, the
``knowledge-neurons`` package (``KnowledgeNeurons.get_scores``) on the equivalent Hugging Face
``BertForMaskedLM`` read from the same checkpoint folder. Speed does not depend on trained weights,
so the models are random (a bert-base-shaped one and a small one) with a synthetic vocabulary.

Printed for each model: prompts per second of each and the ratio, the correlation of the two score
tensors (their alpha grids differ: knowledge-neurons uses ``linspace(0, 1, m)``, which includes the
endpoint, kn_lens ``k/m`` for ``k < m``, the paper's left Riemann sum), the achieved GFLOP/s of
each beside a plain torch matmul's on this machine, and kn_lens' cost per prompt as the bag grows.

    python benchmarks/attribution.py                       # both models, CPU
    python benchmarks/attribution.py --models base --kn-prompts 5
    python benchmarks/attribution.py --device cuda --kn-prompts 10 --bags 1,4,9,20
    python benchmarks/attribution.py --models base --also-dtype bfloat16,float16  # + approximations

Needs ``pip install -r benchmarks/requirements.txt`` (installs knowledge-neurons without its
dependencies, which would otherwise pull another torch). knowledge-neurons is imported here only,
never by kn_lens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHAPES = {
    # name: (n_layers, d_model, d_mlp, n_heads, vocab)
    "base": (12, 768, 3072, 12, 28_996),  # bert-base-cased
    "small": (4, 256, 1024, 4, 28_996),
    "tiny": (2, 64, 128, 4, 1_000),  # a dry run of the script only (benchmarks/gpu.sh --device cpu)
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "a",
    "of",
    "in",
    "is",
    "was",
    "born",
    "city",
    "capital",
    "country",
    "language",
    "speaks",
    "works",
    "as",
    "located",
    "native",
    "official",
    "member",
    "plays",
    "founded",
    "Paris",
    "London",
    "Berlin",
    "Rome",
    "Madrid",
    "French",
    "English",
    "German",
    "Italian",
]


# --------------------------------------------------------------------------------------------
# models and prompts
# --------------------------------------------------------------------------------------------


def make_checkpoint(folder: Path, shape: str, seed: int = 0) -> Path:
    """A random BertForMaskedLM of the given shape with a synthetic vocabulary, saved to
    ``folder``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    n_layers, d_model, d_mlp, n_heads, vocab = SHAPES[shape]
    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + WORDS
    words += [f"w{i}" for i in range(vocab - len(words))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertForMaskedLM(cfg).eval().save_pretrained(folder)
    BertTokenizer.from_pretrained(str(folder), do_lower_case=False).save_pretrained(folder)
    return folder


def make_prompts(n: int, seed: int) -> list[str]:
    """``n`` fact-like prompts of 6-12 words, each with one [MASK] (lengths vary, so batches
    pad)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [
            rng.choice(WORDS[:20] + [f"w{rng.randrange(100, 20_000)}"])
            for _ in range(rng.randint(5, 11))
        ]
        words.insert(rng.randrange(len(words) + 1), "[MASK]")
        out.append(" ".join(words) + " .")
    return out


# --------------------------------------------------------------------------------------------
# FLOP counts (multiply-adds x 2) of the work each implementation must do, at the real lengths
# --------------------------------------------------------------------------------------------


def block_flops(n_tok: int, d: int, f: int) -> float:
    """Forward FLOPs of one BERT block on a sequence of ``n_tok`` tokens."""
    return n_tok * 2 * (4 * d * d + 2 * d * f) + 2 * 2 * n_tok * n_tok * d


def head_flops(n_pos: int, d: int, v: int) -> float:
    return n_pos * 2 * (d * d + d * v)


def block_at_mask_flops(n_tok: int, d: int, f: int) -> float:
    """Forward FLOPs of one BERT block whose output is needed at one position only: keys and
    values at every position, the rest at that position."""
    return n_tok * 2 * 2 * d * d + 2 * (2 * d * d + 2 * d * f) + 2 * 2 * n_tok * d


def flops_kn_lens(lengths: list[int], shape: str, steps: int) -> float:
    """Clean forward once; per layer l and step, forward + input-gradient backward (each ~ the
    forward) of: layer l's MLP output at [MASK], blocks l+1..L-2 in full, the last block at [MASK]
    (keys and values everywhere) and the MLM head at [MASK]."""
    n_layers, d, f, _, v = SHAPES[shape]
    total = 0.0
    for n in lengths:
        total += n_layers * block_flops(n, d, f)
        for layer in range(n_layers):
            above = 0.0
            if layer < n_layers - 1:
                above = (n_layers - 2 - layer) * block_flops(n, d, f) + block_at_mask_flops(n, d, f)
            total += steps * 2 * (above + 2 * d * f + head_flops(1, d, v))
    return total


def flops_exact_floor(lengths: list[int], shape: str, steps: int) -> float:
    """``flops_kn_lens`` less every further exact saving we know of, all in block ``l+1`` (the
    first block after the scaled layer), whose input differs from the clean one at ``[MASK]`` only:

    - at the other positions its queries, keys and values are the clean ones;
    - there its attention output changes only through the ``[MASK]`` key and value, so per head it
      is a mix of three vectors (the clean head output, the clean and the new ``W_O v`` at
      ``[MASK]``): no ``W_O`` product is needed per position;
    - after the layer norm, ``W_in`` of that change is a mix of the same vectors times precomputed
      per-head matrices ``W_in diag(w_ln) W_O^h``: no ``W_in`` product per position either.

    What is left at those positions is ``W_out`` after the GELU, whose input now differs in every
    coordinate, and from block ``l+2`` on the input differs at every position, so every product
    there is needed. Forward and backward both save; the per-row and per-prompt costs of the
    tricks themselves (about one position's worth) are ignored, so this errs low. When block
    ``l+1`` is the last one only its keys and values at the other positions are saved (its query
    is at ``[MASK]`` already)."""
    n_layers, d, f, _, v = SHAPES[shape]
    saved = 0.0
    for n in lengths:
        full_next = max(n_layers - 2, 0)  # layers l whose block l+1 is not the last
        last_next = 1 if n_layers >= 2 else 0  # layer L-2, whose block l+1 is the last
        per_pos = full_next * (4 * d * d + d * f) + last_next * 2 * d * d
        saved += steps * 2 * (n - 1) * 2 * per_pos
    return flops_kn_lens(lengths, shape, steps) - saved


def flops_knowledge_neurons(lengths: list[int], shape: str, steps: int) -> float:
    """Per layer: a baseline forward; per step: a full forward (all blocks, head at every
    position) and the backward from the head down to layer l."""
    n_layers, d, f, _, v = SHAPES[shape]
    total = 0.0
    for n in lengths:
        full = n_layers * block_flops(n, d, f) + head_flops(n, d, v)
        for layer in range(n_layers):
            total += full + steps * (
                full + (n_layers - layer) * block_flops(n, d, f) + head_flops(n, d, v)
            )
    return total


def matmul_gflops(
    device: str, m: int, k: int, n: int, dtype=torch.float32, seconds: float = 2.0
) -> float:
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device != "cpu" and reps % 50:
            continue
        sync(device)
    sync(device)
    return reps * 2 * m * k * n / (time.perf_counter() - t0) / 1e9


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# the two implementations
# --------------------------------------------------------------------------------------------


def knowledge_neurons_cls():
    """``knowledge_neurons.KnowledgeNeurons``; imported here only (benchmark dependency)."""
    try:
        from knowledge_neurons import KnowledgeNeurons
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"knowledge-neurons is not installed: pip install -r benchmarks/requirements.txt ({e})"
        ) from None
    return KnowledgeNeurons


@dataclass
class ModelReport:
    model: str
    shape: dict
    device: str
    steps: int
    batch_size: int
    kn_batch_size: int
    n_prompts: int
    prompt_tokens: list
    ours_s_per_prompt: float
    kn_s_per_prompt: float | None
    speedup: float | None
    bag_s_per_prompt_same_prompts: float
    ours_per_prompt_s: list
    kn_per_prompt_s: list | None
    pearson: float | None
    pearson_per_prompt: list | None
    top20_overlap: float | None
    ours_gflop: float
    kn_gflop: float | None
    ours_gflops: float
    kn_gflops: float | None
    floor_gflop: float
    bound_speedup_at_matmul_peak: float | None
    bag_s_per_prompt: dict
    max_logit_diff_hf_vs_tl: float
    lower_precision: list[dict]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> float:
    """Mean over prompts of the share of ``a``'s top-``k`` neurons that are also ``b``'s."""

    def top(t: torch.Tensor) -> set[int]:
        return set(t.flatten().topk(k).indices.tolist())

    shares = [len(top(x) & top(y)) / k for x, y in zip(a, b, strict=False)]
    return sum(shares) / len(shares)


def run_model(shape: str, args: argparse.Namespace, log, matmul_peak: float) -> ModelReport:
    from transformers import BertForMaskedLM

    from kn_lens import load_model
    from kn_lens.attribution import attribute
    from kn_lens.config import default_batch_size
    from kn_lens.prompts import encode, mask_logits

    device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_checkpoint(Path(tmp) / shape, shape, seed=args.seed)
        tl = load_model(folder, device=device)
        hf = BertForMaskedLM.from_pretrained(str(folder)).eval().to(device)
    tok = tl.tokenizer
    target = "Paris"
    n_layers, d, f, heads, v = SHAPES[shape]

    prompts = make_prompts(args.kn_prompts, seed=args.seed)
    enc = encode(tl, prompts)
    lengths = enc.attention_mask.sum(-1).tolist()
    # same weights, same function: compare the two models' [MASK] logits
    with torch.no_grad():
        hf_in = tok(prompts, return_tensors="pt", padding=True).to(device)
        hf_logits = hf(**hf_in).logits[torch.arange(len(prompts)), enc.mask_pos.to(device)]
    max_diff = float((hf_logits - mask_logits(tl, enc)).abs().max())
    log(
        f"[{shape}] {n_layers} layers, d_model {d}, d_mlp {f}, vocab {v}; prompts of {lengths} "
        f"tokens;"
        f" max |logit_HF - logit_TL| at [MASK] = {max_diff:.2e}"
    )

    def time_ours(ps: list[str], dtype: str | None = None) -> tuple[float, torch.Tensor]:
        sync(device)
        t0 = time.perf_counter()
        scores = attribute(
            tl, ps, target, steps=args.steps, batch_size=args.batch_size, dtype=dtype
        )
        sync(device)
        return time.perf_counter() - t0, scores

    attribute(tl, prompts[:1], target, steps=2, batch_size=args.batch_size)  # warm-up
    kn = None
    if not args.skip_kn:
        kn = knowledge_neurons_cls()(hf, tok, model_type="bert", device=device)
        kn.get_scores_for_layer(
            prompts[0],
            target,
            layer_idx=n_layers - 1,
            batch_size=args.kn_batch_size,
            steps=args.kn_batch_size,
        )  # warm-up

    def time_kn(p: str) -> tuple[float, torch.Tensor]:
        sync(device)
        t0 = time.perf_counter()
        scores = kn.get_scores(
            p, target, steps=args.steps, batch_size=args.kn_batch_size, pbar=False
        )
        sync(device)
        return time.perf_counter() - t0, scores.detach().cpu()

    # One prompt at a time, alternating which implementation goes first, so that a change in the
    # machine's load hits both alike.
    ours_t, kn_t, ours_rows, theirs = [], [], [], []
    for i, p in enumerate(prompts):
        for which in ("ours", "kn") if i % 2 == 0 else ("kn", "ours"):
            if which == "ours":
                dt, sc = time_ours([p])
                ours_t.append(dt)
                ours_rows.append(sc[0])
            elif kn is not None:
                dt, sc = time_kn(p)
                kn_t.append(dt)
                theirs.append(sc)
    ours = torch.stack(ours_rows)
    ours_s = sum(ours_t) / len(prompts)
    ours_flop = flops_kn_lens(lengths, shape, args.steps)
    bag_dt, bag_scores = time_ours(prompts)  # the same prompts as one bag
    bag_max_diff = float((bag_scores - ours).abs().max() / ours.abs().max())
    log(
        f"[{shape}] kn_lens:           {ours_s:8.3f} s/prompt  {1 / ours_s:8.3f} prompts/s  "
        f"{ours_flop / len(prompts) / 1e9:7.1f} GFLOP/prompt  "
        f"{ours_flop / ours_s / len(prompts) / 1e9:6.1f} GFLOP/s"
        f"   (per prompt: {', '.join(f'{t:.2f}' for t in ours_t)} s)"
    )
    log(
        f"[{shape}] kn_lens, the {len(prompts)} prompts as one bag: "
        f"{bag_dt / len(prompts):.3f} s/prompt "
        f"(scores equal the one-at-a-time ones to {bag_max_diff:.1e} relative)"
    )

    kn_s = speedup = corr = top20 = kn_flop = kn_gflops = bound = None
    floor_flop = flops_exact_floor(lengths, shape, args.steps)
    per_prompt = None
    if kn is not None:
        kn_s = sum(kn_t) / len(prompts)
        theirs_t = torch.stack(theirs)
        kn_flop = flops_knowledge_neurons(lengths, shape, args.steps)
        kn_gflops = kn_flop / kn_s / len(prompts) / 1e9
        speedup = kn_s / ours_s
        corr = pearson(ours, theirs_t)
        per_prompt = [pearson(ours[i], theirs_t[i]) for i in range(len(prompts))]
        top20 = top_overlap(ours, theirs_t)
        log(
            f"[{shape}] knowledge-neurons: {kn_s:8.3f} s/prompt  {1 / kn_s:8.3f} prompts/s  "
            f"{kn_flop / len(prompts) / 1e9:7.1f} GFLOP/prompt  {kn_gflops:6.1f} GFLOP/s"
            f"   (per prompt: {', '.join(f'{t:.2f}' for t in kn_t)} s)"
        )
        log(
            f"[{shape}] speed-up kn_lens / knowledge-neurons: {speedup:.2f}x one prompt at a time "
            f"(per prompt "
            f"{', '.join(f'{k_ / o:.2f}' for k_, o in zip(kn_t, ours_t, strict=False))}), "
            f"{kn_s * len(prompts) / bag_dt:.2f}x against kn_lens' bag;  FLOP ratio "
            f"{kn_flop / ours_flop:.2f}"
        )
        log(
            f"[{shape}] Pearson r of the scores: {corr:.5f} (per prompt min "
            f"{min(per_prompt):.5f});  "
            f"top-20 neuron overlap {top20:.2f}"
        )
        floor_s = floor_flop / (matmul_peak * 1e9)
        bound = kn_s * len(prompts) / floor_s
        log(
            f"[{shape}] bound: an exact method does >= {floor_flop / len(prompts) / 1e9:.1f} "
            f"GFLOP/prompt; at the plain matmul's {matmul_peak:.1f} GFLOP/s that is "
            f">= {floor_s / len(prompts):.3f} s/prompt, so at most {bound:.2f}x knowledge-neurons; "
            f"at equal efficiency at most {kn_flop / floor_flop:.2f}x (the work ratio)"
        )

    low = []
    for low_dtype in args.also_dtype:
        # The opt-in approximation (attribute(..., dtype=...): the scaled passes under autocast),
        # timed beside the exact float32 run on the same prompts one at a time; agreement is
        # against kn_lens' float32 scores.
        attribute(tl, prompts[:1], target, steps=2, batch_size=args.batch_size, dtype=low_dtype)
        low_runs = [time_ours([p], dtype=low_dtype) for p in prompts]
        low_scores = torch.stack([sc[0].float() for _, sc in low_runs])
        low_s = sum(dt for dt, _ in low_runs) / len(prompts)
        low_top = top_overlap(low_scores, ours)
        entry = {
            "dtype": low_dtype,
            "s_per_prompt": low_s,
            "speedup_vs_knowledge_neurons": None if kn_s is None else kn_s / low_s,
            "speedup_vs_float32": ours_s / low_s,
            "pearson_vs_float32": pearson(low_scores, ours),
            "top20_overlap_vs_float32": low_top,
        }
        low.append(entry)
        log(
            f"[{shape}] kn_lens with dtype={low_dtype} (approximate): {low_s:.3f} s/prompt, "
            f"{ours_s / low_s:.2f}x its float32 run"
            + ("" if kn_s is None else f", {kn_s / low_s:.2f}x knowledge-neurons (float32)")
            + f"; Pearson r vs float32 {entry['pearson_vs_float32']:.5f}, top-20 overlap "
            f"{low_top:.2f}"
        )

    bag_costs = {}
    for n in args.bags:
        bag = make_prompts(n, seed=args.seed + 1000 + n)
        sync(device)
        t0 = time.perf_counter()
        attribute(tl, bag, target, steps=args.steps, batch_size=args.batch_size)
        sync(device)
        bag_costs[n] = (time.perf_counter() - t0) / n
    log(
        f"[{shape}] kn_lens cost per prompt by bag size: "
        + ", ".join(f"{n}: {s:.3f} s" for n, s in bag_costs.items())
    )
    if args.bags:  # the lower precisions on the largest bag too, where batching pays most
        n = max(args.bags)
        bag = make_prompts(n, seed=args.seed + 1000 + n)
        for entry in low:
            sync(device)
            t0 = time.perf_counter()
            attribute(
                tl, bag, target, steps=args.steps, batch_size=args.batch_size, dtype=entry["dtype"]
            )
            sync(device)
            entry["largest_bag"] = n
            entry["bag_s_per_prompt"] = (time.perf_counter() - t0) / n
            entry["bag_speedup_vs_float32"] = bag_costs[n] / entry["bag_s_per_prompt"]
            log(
                f"[{shape}] dtype={entry['dtype']} on a bag of {n}: "
                f"{entry['bag_s_per_prompt']:.3f} s/prompt, "
                f"{entry['bag_speedup_vs_float32']:.2f}x float32's bag"
            )

    return ModelReport(
        model=shape,
        shape=dict(
            zip(("n_layers", "d_model", "d_mlp", "n_heads", "vocab"), SHAPES[shape], strict=False)
        ),
        device=device,
        steps=args.steps,
        batch_size=args.batch_size or default_batch_size(device),
        kn_batch_size=args.kn_batch_size,
        n_prompts=len(prompts),
        prompt_tokens=lengths,
        ours_s_per_prompt=ours_s,
        kn_s_per_prompt=kn_s,
        speedup=speedup,
        bag_s_per_prompt_same_prompts=bag_dt / len(prompts),
        ours_per_prompt_s=ours_t,
        kn_per_prompt_s=kn_t or None,
        pearson=corr,
        pearson_per_prompt=per_prompt,
        top20_overlap=top20,
        ours_gflop=ours_flop / len(prompts) / 1e9,
        kn_gflop=None if kn_flop is None else kn_flop / len(prompts) / 1e9,
        ours_gflops=ours_flop / ours_s / len(prompts) / 1e9,
        kn_gflops=kn_gflops,
        floor_gflop=floor_flop / len(prompts) / 1e9,
        bound_speedup_at_matmul_peak=bound,
        bag_s_per_prompt=bag_costs,
        max_logit_diff_hf_vs_tl=max_diff,
        lower_precision=low,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--models", default="base,small", help="comma list of: " + ", ".join(SHAPES))
    ap.add_argument("--kn-prompts", type=int, default=3, help="prompts timed on both (default 3)")
    ap.add_argument("--bags", default="1,4,9", help="bag sizes for kn_lens' cost per prompt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="kn_lens rows per pass (default: kn_lens' default for the device)",
    )
    ap.add_argument(
        "--kn-batch-size",
        type=int,
        default=10,
        help="knowledge-neurons batch size (its default, 10; must divide --steps)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--skip-kn", action="store_true", help="time kn_lens only")
    ap.add_argument(
        "--also-dtype",
        default="",
        help="comma list of bfloat16, float16: also time attribute(..., dtype=...) (the opt-in "
        "autocast approximation) and compare its scores with float32's",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    args.bags = [int(b) for b in args.bags.split(",") if b]
    args.also_dtype = [d for d in args.also_dtype.split(",") if d]
    for d in args.also_dtype:
        if d not in ("bfloat16", "float16"):
            ap.error(f"--also-dtype: {d!r} is not one of bfloat16, float16")
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"kn_lens attribution benchmark  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    dev_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    log(
        f"device {args.device} ({dev_name}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; load average at start {load}"
    )
    if load and load[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        log(
            "note: the machine is loaded; multi-threaded torch ops stall on busy cores, which"
            " penalises many small ops. Consider --threads 1 for a fairer comparison."
        )
    mm = {}
    shapes = [s for s in args.models.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown model shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    for shape in shapes:
        _, d, f, _, _ = SHAPES[shape]
        mm[shape] = matmul_gflops(args.device, 64 * 12, d, f)
        log(f"plain torch matmul [{64 * 12}x{d}] @ [{d}x{f}] float32: {mm[shape]:.1f} GFLOP/s")
    reports = [run_model(s, args, log, mm[s]) for s in shapes]
    wall = time.perf_counter() - t_start
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"total wall time {wall:.0f} s; load average at end {load_end}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "device": args.device,
                    "device_name": dev_name,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_start": load,
                    "load_end": load_end,
                    "wall_s": wall,
                    "matmul_gflops": mm,
                    "models": [asdict(r) for r in reports],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
