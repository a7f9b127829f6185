"""Benchmark: attribution on a ``TransformerBridge`` against the TransformerLens 3.9 classes, side
by side in one run (TransformerLens 3.9, which has both backends).

For each model, the same facts are attributed with ``kn_lens.attribute(..., steps=20)`` on
``load_model(M, backend="hooked")`` (``HookedEncoder`` / ``HookedTransformer``: kn_lens' fast
paths) and on ``load_model(M, backend="bridge")``, alternating which goes first every round so that
a change in the machine's load hits both alike (best of ``--repeats`` per fact). It prints seconds
per fact on each backend, their ratio (bridge / hooked; the target is <= 1.5), the largest
difference of the scores relative to the largest score, and whether the knowledge neurons are the
same.

    python benchmarks/bridge.py                                  # default model + a GPT-2 shape
    python benchmarks/bridge.py --decoder smollm2-135m --decoder-prompts 2
    python benchmarks/bridge.py --json benchmarks/results/bridge.json --threads 2
    python benchmarks/bridge.py --bags 0 --repeats 1 --decoder none   # all 1,620 default facts

``--bags 0`` takes every default-model fact (1,620): with ``--repeats 1`` that is the agreement
check (same knowledge neurons on both backends, fact by fact), with times.

The decoder defaults to a random GPT-2-shaped checkpoint folder (``--decoder gpt2-shape``; 12
layers, d_model 768, d_mlp 3072, a 50,257-token vocabulary) written to a temporary folder, since
speed does not depend on trained weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kn_lens  # noqa: E402
from kn_lens.data import Fact, FactBag, default_facts  # noqa: E402
from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION  # noqa: E402

DECODER_FACTS = [
    (["The capital of France is", "France's capital city is", "The French capital is"], "Paris"),
    (["The official language of Japan is", "People in Japan speak"], "Japanese"),
    (["Barack Obama was born in", "The birthplace of Barack Obama is"], "Hawaii"),
]


def gpt2_shape(folder: Path) -> Path:
    """A random GPT-2-small-shaped checkpoint (a word tokenizer for the facts' words; the
    model's vocabulary is GPT-2's 50,257)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.word_tokenizer import save_word_tokenizer

    words = sorted({w for prompts, ans in DECODER_FACTS for p in prompts for w in p.split()})
    words += [ans for _, ans in DECODER_FACTS]
    n_vocab = len(
        save_word_tokenizer(
            folder,
            words,
            specials=("<unk>", "<|endoftext|>"),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
        )
    )
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=max(n_vocab, 50257), bos_token_id=1, eos_token_id=1)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    return folder


def time_one(model, prompts, answer, steps: int):
    t = time.perf_counter()
    scores = kn_lens.attribute(model, prompts, answer, steps=steps)
    return time.perf_counter() - t, scores


def compare(name: str, source: str, facts, steps: int, repeats: int, bags=None) -> dict:
    hooked = kn_lens.load_model(source, device="cpu", backend="hooked")
    bridge = kn_lens.load_model(source, device="cpu", backend="bridge")
    t_h, t_b, worst, same = [], [], 0.0, 0
    differ: list[dict] = []
    for i, (prompts, answer) in enumerate(facts):
        best_h = best_b = float("inf")
        for r in range(repeats):
            order = [("h", hooked), ("b", bridge)]
            if (i + r) % 2:
                order.reverse()
            for which, model in order:
                dt, s = time_one(model, prompts, answer, steps)
                if which == "h":
                    best_h, s_h = min(best_h, dt), s
                else:
                    best_b, s_b = min(best_b, dt), s
        t_h.append(best_h)
        t_b.append(best_b)
        worst = max(worst, float((s_b - s_h).abs().max() / s_h.abs().max()))
        if bags is not None:
            n_h = kn_lens.find_knowledge_neurons(hooked, bags[i], scores=s_h)
            n_b = kn_lens.find_knowledge_neurons(bridge, bags[i], scores=s_b)
            same += n_h == n_b
            if n_h != n_b:
                differ.append(
                    {"fact": i, "hooked": [str(n) for n in n_h], "bridge": [str(n) for n in n_b]}
                )
        if (i + 1) % 100 == 0 or i + 1 == len(facts):
            print(f"  {name}: {i + 1}/{len(facts)} facts, same neurons so far {same}", flush=True)
    out = {
        "model": name,
        "facts": len(facts),
        "prompts": sum(len(p) for p, _ in facts),
        "hooked_s_per_fact": sum(t_h) / len(t_h),
        "bridge_s_per_fact": sum(t_b) / len(t_b),
        "ratio_bridge_over_hooked": sum(t_b) / sum(t_h),
        "max_rel_diff": worst,
    }
    if bags is not None:
        out["same_knowledge_neurons"] = f"{same}/{len(facts)}"
        out["facts_with_other_neurons"] = differ
    print(
        f"{name}: hooked {out['hooked_s_per_fact']:.3f} s/fact, bridge "
        f"{out['bridge_s_per_fact']:.3f} s/fact, ratio {out['ratio_bridge_over_hooked']:.2f}x, "
        f"max rel diff {worst:.1e}"
        + (f", same neurons {out['same_knowledge_neurons']}" if bags else "")
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bags", type=int, default=3, help="default-model facts (default 3; 0: all)")
    ap.add_argument(
        "--decoder", default="gpt2-shape", help="gpt2-shape, a folder, smollm2-135m or none"
    )
    ap.add_argument("--decoder-prompts", type=int, default=3, help="prompts per decoder fact")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not HAS_HOOKED_CLASSES:
        sys.exit(
            f"TransformerLens {TL_VERSION} has no HookedEncoder: run under 3.9 (both backends)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    bags = default_facts()
    bags = bags[: args.bags] if args.bags else bags
    enc_facts = [(list(b.prompts), b.fact.object) for b in bags]
    results = [compare("default", "default", enc_facts, args.steps, args.repeats, bags)]
    dec_facts = [(p[: args.decoder_prompts], a) for p, a in DECODER_FACTS]
    dec_bags = [FactBag(Fact("-", "-", "-", "N-1", a), tuple(p), prefix=True) for p, a in dec_facts]
    with tempfile.TemporaryDirectory() as tmp:
        source = args.decoder
        if source == "gpt2-shape":
            source = str(gpt2_shape(Path(tmp) / "gpt2"))
        if source != "none":
            results.append(
                compare(args.decoder, source, dec_facts, args.steps, args.repeats, dec_bags)
            )
    record = {
        "transformer_lens": TL_VERSION,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
