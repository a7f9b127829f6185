"""Benchmark: decoder integrated gradients (kn_lens.attribute on a HookedTransformer) against the
``knowledge-neurons`` way, side by side in one run, on a GPT-2-small-shaped random
``HookedTransformer`` (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257, n_ctx 1024).

The knowledge-neurons way (its GPT path does not run, so it is written here on the same model): per
layer ``l``, one full forward and backward of the ``m`` scaled copies as one batch over the whole
prompt + answer sequence, with a hook putting ``alpha_k * a`` into ``blocks.{l}.mlp.hook_post`` at
the last prompt position; ``p(answer)`` is the product of the teacher-forced token probabilities;
the gradient is taken with respect to the scaled activations. Both use the left Riemann grid
``alpha_k = k/m`` (the package's own grid is ``linspace(0, 1, m)``), so the scores agree up to
float rounding: the Pearson correlation is printed beside the speed ratio (target >= 0.999).

The two are timed alternately (``--repeats`` rounds, the order swapped every round, best of each),
so that a change in the machine's load hits both alike.

FLOP counts (matmuls and attention products, 2 per multiply-add; the input-gradient backward of a
matmul counted as one forward, as no weight gradient is taken). ``T`` = tokens fed (prompt + answer
- 1), ``S`` = segment positions (the read position and the fed answer tokens = answer length),
``m`` = steps, ``L`` = layers, "block at n over k" = one block for n query positions attending over
k keys, "head" = final norm and unembedding (``2 d V`` per position):

- knowledge-neurons way: per layer ``l`` and step, forward of all ``L`` blocks at ``T`` and the head
  at ``T``; backward from the head at ``T`` down to block ``l``;
- kn_lens: one clean forward (blocks at ``T``, head at ``S``); per layer ``l`` and step, forward and
  backward of block ``l``'s ``W_out`` at the read position, blocks ``l+1 .. L-1`` at ``S`` over
  ``T`` keys, and the head at ``S``;
- exact-work floor: the least work an exact method must do. A row (one layer, one step) changes
  nothing below block ``l``'s MLP output at the read position, and nothing at earlier positions at
  any layer (causal attention), so their keys and values are the clean pass's. From block ``l+1`` on
  the read position differs, and the answer positions differ through their attention to it; the
  probability needs every logit at the ``S`` positions (softmax), and its gradient every
  unembedding column. That is kn_lens' count, less one saving in block ``l+1`` (as in the encoder
  benchmark's floor): there the answer positions' own inputs are still clean, so their queries,
  keys and values are the clean ones, and their attention output changes only through the read
  position's key and value (per head a mix of the clean output and the new ``W_O v``), so neither
  ``W_O`` nor ``W_in`` needs a product at those positions. The cost of the tricks themselves is
  ignored, so the floor errs low. The clean forward is in the floor: the activations it reads are
  the scores' factor.

``bound`` is the knowledge-neurons way's measured time divided by the floor's FLOPs at a plain
``torch.matmul``'s measured speed ([m*T x d] @ [d x d_mlp]): the speed-up an exact method could
reach if every element-wise operation, copy and layer norm were free.

    python benchmarks/decoder_attribution.py                   # GPT-2-small shape, CPU
    python benchmarks/decoder_attribution.py --tiny --threads 1
    python benchmarks/decoder_attribution.py --layers 4 --d-model 256 --vocab 5000   # dry run
    python benchmarks/decoder_attribution.py --device cuda --repeats 3 --json decoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kn_lens.attribution import attribute  # noqa: E402
from kn_lens.models.decoder import encode_decoder  # noqa: E402

SHAPES = {
    # name: (n_layers, d_model, n_heads, d_mlp, vocab, n_ctx)
    "gpt2-small": (12, 768, 12, 3072, 50_257, 1024),
    "tiny": (2, 64, 4, 256, 1_000, 128),
}
Shape = tuple[int, int, int, int, int, int]


def build(shape: Shape, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    n_layers, d, h, f, v, ctx = shape
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d,
        n_heads=h,
        d_head=d // h,
        d_mlp=f,
        d_vocab=v,
        n_ctx=ctx,
        act_fn="gelu_new",
        normalization_type="LN",
        device=device,
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def block_flops(n_q: int, n_kv: int, d: int, f: int) -> float:
    """Forward FLOPs of one GPT-2 block for ``n_q`` query positions attending over ``n_kv`` keys
    (keys and values computed for the ``n_q`` new positions only)."""
    return n_q * 2 * (4 * d * d + 2 * d * f) + 2 * 2 * n_q * n_kv * d


def flops(shape: Shape, prompt_len: int, answer_len: int, steps: int) -> dict[str, float]:
    """Analytic FLOPs of one prompt: ``kn`` (knowledge-neurons way), ``ours``, ``floor``; see the
    module docstring."""
    n_layers, d, _, f, v, _ = shape
    t = prompt_len + answer_len - 1  # tokens fed
    s = answer_len  # segment: read position and the fed answer tokens
    head = 2 * d * v
    clean = n_layers * block_flops(t, t, d, f) + head * s
    kn = 0.0
    ours = clean
    saved = 0.0
    for layer in range(n_layers):
        fwd = steps * (n_layers * block_flops(t, t, d, f) + head * t)
        bwd = steps * ((n_layers - layer) * block_flops(t, t, d, f) + head * t)
        kn += fwd + bwd
        ours += (
            steps * 2 * (2 * d * f + (n_layers - layer - 1) * block_flops(s, t, d, f) + head * s)
        )
        if layer < n_layers - 1:  # block l+1 at the answer positions: no Q, K, V, W_O, W_in
            saved += steps * 2 * (s - 1) * 2 * (4 * d * d + d * f)
    return {"kn": kn, "ours": ours, "floor": ours - saved}


def kn_way(model, prompt: list[int], answer: list[int], steps: int) -> torch.Tensor:
    """Per layer: one batch of the m scaled copies, full sequence, forward and backward."""
    dev = model.cfg.device
    tokens = torch.tensor([prompt + answer[:-1]], device=dev)
    read = len(prompt) - 1
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
    alpha = torch.arange(steps, device=dev, dtype=model.cfg.dtype)[:, None] / steps
    batch = tokens.expand(steps, -1)
    out = []
    for layer in range(model.cfg.n_layers):
        clean = cache[f"blocks.{layer}.mlp.hook_post"][0, read]
        scaled = (alpha * clean).requires_grad_(True)

        def put(act, hook, scaled=scaled):
            act = act.clone()
            act[:, read] = scaled
            return act

        logits = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", put)])
        logp = logits.log_softmax(-1)
        pos = torch.arange(read, read + len(answer), device=dev)
        ids = torch.tensor(answer, device=dev)
        p = logp[:, pos, ids].sum(-1).exp()
        (g,) = torch.autograd.grad(p.sum(), scaled)
        out.append(clean * g.sum(0) / steps)
    return torch.stack(out)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def once(fn, device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def matmul_gflops(device: str, m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """A plain float32 ``[m x k] @ [k x n]``'s speed on this machine."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync(device)
    return reps * 2 * m * k * n / (time.perf_counter() - t0) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tiny", action="store_true", help="start from a 2-layer d_model 64 shape")
    for flag in ("--layers", "--d-model", "--n-heads", "--d-mlp", "--vocab", "--n-ctx"):
        ap.add_argument(flag, type=int, default=None, help=f"override the shape's {flag[2:]}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=12)
    ap.add_argument("--answer-len", type=int, default=2)
    ap.add_argument(
        "--prompts", type=int, default=1, help="prompts in the bag (all of --prompt-len tokens)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=256, help="rows per pass (256: one chunk of the 240 rows)"
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="alternating timing rounds, best of each"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = "tiny" if args.tiny else "gpt2-small"
    shape_list = list(SHAPES[base])
    for i, value in enumerate(
        (args.layers, args.d_model, args.n_heads, args.d_mlp, args.vocab, args.n_ctx)
    ):
        if value is not None:
            shape_list[i] = value
    shape: Shape = tuple(shape_list)  # type: ignore[assignment]
    name = base if shape == SHAPES[base] else "custom"
    torch.manual_seed(0)
    model = build(shape, args.device)
    v = shape[4]
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, v, (args.prompt_len,), generator=g).tolist()
    answer = torch.randint(0, v, (args.answer_len,), generator=g).tolist()
    bag = [prompt] + [
        torch.randint(0, v, (args.prompt_len,), generator=g).tolist()
        for _ in range(args.prompts - 1)
    ]
    enc = encode_decoder(model, [prompt], answer)
    assert enc.tokens.shape[1] == args.prompt_len + args.answer_len - 1

    def ours_fn() -> torch.Tensor:
        return attribute(model, bag, answer, steps=args.steps, batch_size=args.batch_size)

    def kn_fn() -> torch.Tensor:
        return torch.stack([kn_way(model, p, answer, args.steps).cpu() for p in bag])

    # warm-up (allocator, kernels), then alternating rounds
    attribute(model, [prompt], answer, steps=2, batch_size=args.batch_size)
    kn_way(model, prompt, answer, 1)
    ours_t: list[float] = []
    kn_t: list[float] = []
    ours = kn = torch.empty(0)
    for r in range(args.repeats):
        for which in ("ours", "kn") if r % 2 == 0 else ("kn", "ours"):
            if which == "ours":
                s, ours = once(ours_fn, args.device)
                ours_t.append(s)
            else:
                s, kn = once(kn_fn, args.device)
                kn_t.append(s)
    ours_s, kn_s = min(ours_t), min(kn_t)
    a, b = ours.flatten().double(), kn.flatten().double()
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    max_rel = float((a - b).abs().max() / b.abs().max())
    fl = {
        k: v * args.prompts
        for k, v in flops(shape, args.prompt_len, args.answer_len, args.steps).items()
    }
    t = args.prompt_len + args.answer_len - 1
    mm = matmul_gflops(args.device, args.steps * t, shape[1], shape[3])
    floor_s = fl["floor"] / (mm * 1e9)
    figures = {
        "shape": name,
        "n_layers": shape[0],
        "d_model": shape[1],
        "n_heads": shape[2],
        "d_mlp": shape[3],
        "vocab": shape[4],
        "n_ctx": shape[5],
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "answer_len": args.answer_len,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "ours_s": ours_s,
        "kn_s": kn_s,
        "ours_s_all": ours_t,
        "kn_s_all": kn_t,
        "speedup": kn_s / ours_s,
        "speedup_median": statistics.median(kn_t) / statistics.median(ours_t),
        "pearson": pearson,
        "max_rel_diff": max_rel,
        "ours_gflop": fl["ours"] / 1e9,
        "kn_gflop": fl["kn"] / 1e9,
        "floor_gflop": fl["floor"] / 1e9,
        "flop_ratio": fl["kn"] / fl["ours"],
        "floor_ratio": fl["kn"] / fl["floor"],
        "matmul_gflops": mm,
        "ours_gflops": fl["ours"] / ours_s / 1e9,
        "kn_gflops": fl["kn"] / kn_s / 1e9,
        "floor_s_at_matmul_speed": floor_s,
        "bound": kn_s / floor_s,
        "speedup_target_8x_met": kn_s / ours_s >= 8.0,
        "pearson_target_0999_met": pearson >= 0.999,
    }
    print(
        f"decoder IG, {name} {shape}, {args.device}, {figures['threads']} threads, "
        f"{args.prompts} prompt(s) of {args.prompt_len} + answer {args.answer_len} tokens, "
        f"m={args.steps}, "
        f"best of {args.repeats}"
    )
    print(f"  kn_lens            {ours_s:8.3f} s  {fl['ours'] / 1e9:9.2f} GFLOP  "
          f"{figures['ours_gflops']:7.1f} GFLOP/s")  # fmt: skip
    print(f"  knowledge-neurons  {kn_s:8.3f} s  {fl['kn'] / 1e9:9.2f} GFLOP  "
          f"{figures['kn_gflops']:7.1f} GFLOP/s")  # fmt: skip
    print(f"  exact-work floor   {floor_s:8.3f} s  {fl['floor'] / 1e9:9.2f} GFLOP  "
          f"(at the plain matmul's {mm:.1f} GFLOP/s)")  # fmt: skip
    print(
        f"  speed-up {figures['speedup']:.2f}x (target 8x: "
        f"{'met' if figures['speedup_target_8x_met'] else 'NOT met'}; median "
        f"{figures['speedup_median']:.2f}x), FLOP ratio {figures['flop_ratio']:.2f}x, floor "
        f"ratio {figures['floor_ratio']:.2f}x, bound {figures['bound']:.2f}x"
    )
    print(
        f"  pearson {pearson:.6f} (target 0.999: "
        f"{'met' if figures['pearson_target_0999_met'] else 'NOT met'}), "
        f"max rel diff {max_rel:.2e}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
