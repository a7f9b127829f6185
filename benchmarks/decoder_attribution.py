"""Benchmark: decoder integrated gradients (kn_lens.models.decoder.decoder_attribute) against the
``knowledge-neurons`` way, side by side in one run, on a GPT-2-small-shaped random
``HookedTransformer`` (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257, n_ctx 1024).

The knowledge-neurons way (its GPT path does not run, so it is written here on the same model): per
layer ``l``, one full forward and backward of the ``m`` scaled copies as one batch over the whole
prompt + answer sequence, with a hook putting ``alpha_k * a`` into ``blocks.{l}.mlp.hook_post`` at
the last prompt position; ``p(answer)`` is the product of the teacher-forced token probabilities;
the gradient is taken with respect to the scaled activations. Both use the left Riemann grid
``alpha_k = k/m`` (the package's own grid is ``linspace(0, 1, m)``), so the scores should agree up
to float rounding: the Pearson correlation is printed beside the speed ratio.

FLOP counts (matmuls and attention products; an input-gradient backward counted as one forward):

- knowledge-neurons way: per layer ``l``, forward of ``m`` copies of ``T`` tokens through all ``L``
  blocks and the unembedding at every position, and the backward from the unembedding down to
  block ``l``;
- kn_lens: one clean forward over ``T`` tokens; per layer ``l`` and step, forward + backward of
  blocks ``l .. L-1`` on the ``S`` segment positions (the read position and the fed answer tokens,
  ``S`` = answer length) attending over the cached prefix keys/values, and the unembedding at the
  ``S`` positions;
- exact-work floor: the clean forward, and per layer ``l`` and step forward + backward of only what
  the scaled activation reaches: layer ``l``'s ``W_out`` at the read position, blocks ``l+1 ..
  L-1`` at the ``S`` segment positions (their keys and values at earlier positions are clean), the
  final norm and the unembedding at the ``S`` positions (the softmax needs every logit, and its
  gradient every unembedding column). kn_lens is above the floor by the attention and ``W_in`` of
  block ``l`` at the segment positions (recomputed there although clean) and block ``l``'s MLP at
  the answer positions.

    python benchmarks/decoder_attribution.py                   # GPT-2-small shape, CPU
    python benchmarks/decoder_attribution.py --tiny --threads 1
    python benchmarks/decoder_attribution.py --device cuda --json decoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kn_lens.models.decoder import decoder_attribute, encode_decoder  # noqa: E402

SHAPES = {
    # name: (n_layers, d_model, n_heads, d_mlp, vocab, n_ctx)
    "gpt2-small": (12, 768, 12, 3072, 50_257, 1024),
    "tiny": (2, 64, 4, 256, 1_000, 128),
}


def build(shape: str, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    n_layers, d, h, f, v, ctx = SHAPES[shape]
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d, n_heads=h, d_head=d // h, d_mlp=f,
                                  d_vocab=v, n_ctx=ctx, act_fn="gelu_new", normalization_type="LN",
                                  device=device, seed=0)
    model = HookedTransformer(cfg)
    model.eval()
    return model


def block_flops(n_q: int, n_kv: int, d: int, f: int) -> float:
    """Forward FLOPs of one GPT-2 block for ``n_q`` query positions attending over ``n_kv`` keys
    (keys and values computed for the ``n_q`` new positions only)."""
    return n_q * 2 * (4 * d * d + 2 * d * f) + 2 * 2 * n_q * n_kv * d


def flops(shape: str, prompt_len: int, answer_len: int, steps: int) -> dict[str, float]:
    n_layers, d, _, f, v, _ = SHAPES[shape]
    t = prompt_len + answer_len - 1  # tokens fed
    s = answer_len  # segment: read position and the fed answer tokens
    head = 2 * d * v
    clean = n_layers * block_flops(t, t, d, f) + head * s
    kn = 0.0
    ours = clean
    floor = clean
    for layer in range(n_layers):
        fwd = steps * (n_layers * block_flops(t, t, d, f) + head * t)
        bwd = steps * ((n_layers - layer) * block_flops(t, t, d, f) + head * t)
        kn += fwd + bwd
        ours += steps * 2 * ((n_layers - layer) * block_flops(s, t, d, f) + head * s)
        floor += steps * 2 * (
            2 * d * f + (n_layers - layer - 1) * block_flops(s, t, d, f) + head * s
        )
    return {"kn": kn, "ours": ours, "floor": floor}


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


def timed(fn, device: str, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer d_model 64 model (dry run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=12)
    ap.add_argument("--answer-len", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256,
                    help="rows per pass (256: one chunk of the 240 rows)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many timings each")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "tiny" if args.tiny else "gpt2-small"
    torch.manual_seed(0)
    model = build(shape, args.device)
    v = SHAPES[shape][4]
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, v, (args.prompt_len,), generator=g).tolist()
    answer = torch.randint(0, v, (args.answer_len,), generator=g).tolist()
    enc = encode_decoder(model, [prompt], answer)
    assert enc.tokens.shape[1] == args.prompt_len + args.answer_len - 1

    # warm-up (allocator, kernels), then the timings
    decoder_attribute(model, [prompt], answer, steps=2, batch_size=args.batch_size)
    ours_s, ours = timed(
        lambda: decoder_attribute(model, [prompt], answer, steps=args.steps,
                                  batch_size=args.batch_size)[0],
        args.device, args.repeats,
    )
    kn_s, kn = timed(lambda: kn_way(model, prompt, answer, args.steps).cpu(), args.device,
                     args.repeats)
    a, b = ours.flatten().double(), kn.flatten().double()
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    max_rel = float((a - b).abs().max() / b.abs().max())
    fl = flops(shape, args.prompt_len, args.answer_len, args.steps)
    figures = {
        "shape": shape,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "prompt_len": args.prompt_len,
        "answer_len": args.answer_len,
        "batch_size": args.batch_size,
        "ours_s": ours_s,
        "kn_s": kn_s,
        "speedup": kn_s / ours_s,
        "pearson": pearson,
        "max_rel_diff": max_rel,
        "ours_gflop": fl["ours"] / 1e9,
        "kn_gflop": fl["kn"] / 1e9,
        "floor_gflop": fl["floor"] / 1e9,
        "flop_ratio": fl["kn"] / fl["ours"],
        "floor_ratio": fl["kn"] / fl["floor"],
    }
    print(f"decoder IG, {shape}, {args.device}, {figures['threads']} threads, "
          f"prompt {args.prompt_len} + answer {args.answer_len} tokens, m={args.steps}")
    print(f"  kn_lens              {ours_s:8.3f} s   {fl['ours'] / 1e9:9.3f} GFLOP")
    print(f"  knowledge-neurons    {kn_s:8.3f} s   {fl['kn'] / 1e9:9.3f} GFLOP")
    print(f"  exact-work floor                {fl['floor'] / 1e9:9.3f} GFLOP")
    print(f"  speedup {figures['speedup']:.2f}x (FLOP ratio {figures['flop_ratio']:.2f}x, "
          f"floor ratio {figures['floor_ratio']:.2f}x)  pearson {pearson:.6f}  "
          f"max rel diff {max_rel:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
