"""The decoder family: prompts, answers and integrated gradients for causal LMs (HookedTransformer).

Everything here is what differs from the encoder family (``kn_lens.prompts`` and
``kn_lens.attribution``):

**Where a fact is read.** A decoder prompt is the text *before* the answer ("The capital of France
is"); it has no ``[MASK]`` (a prompt with one is a ``ValueError`` naming it). Neurons are read,
scaled and intervened on at the *last prompt position*, the position whose next-token distribution
starts the answer.

**The answer's probability.** The answer's tokens follow the prompt and are fed in as the model's
own input (teacher forcing): for answer tokens ``a_0 .. a_{A-1}``,
``p(answer | prompt) = prod_k p(a_k | prompt, a_0 .. a_{k-1})``. The last answer token is never fed
(nothing reads what follows it). A one-token answer is the special case ``A = 1``.

**Tokenisation.** The prompt is tokenised with ``model.to_tokens`` and TransformerLens' BOS
convention for the model (``model.cfg.default_prepend_bos``: GPT-2-style models get a BOS token in
front, models converted with ``default_prepend_bos=False`` do not). The answer is tokenised on its
own without BOS, with a leading space added when the prompt does not end in whitespace and the
answer does not start with one (``"... is"`` + ``"Paris"`` -> tokens of ``" Paris"``), which is how
a BPE vocabulary spells a word that follows another. Prompts and answers may also be given as token
id lists; those are used exactly as given (no BOS, no space).

**Padding.** A bag of prompts of different lengths is padded on the *left* and the answers on the
right: ``[pad .. pad, prompt, a_0 .. a_{A-2}, pad ..]``. Every row then reads at the same position
``read_pos = P - 1`` and its answer occupies the same positions, so a batch of rows shares one
prefix length for the cached keys and values. Positions stay right: TransformerLens computes the
position ids from the attention mask (``cumsum - 1``) for absolute and rotary embeddings alike, so
each real token has the position it has without padding; right padding after the answer is never
attended to by a real position (causal mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.addmm import batch_addmm

from kn_lens.config import default_batch_size
from kn_lens.data.facts import FactBag, prefix_prompt
from kn_lens.models.family import BagCheck
from kn_lens.neuron import Hook, HookList, hook_name, no_param_grads, resolve_layers

__all__ = [
    "EncodedDecoderPrompts",
    "encode_decoder",
    "template_to_prompt",
    "templates_to_prompts",
    "answer_logprob",
    "next_token",
    "decoder_attribute",
    "DecoderFamily",
]

MASK = "[MASK]"


@dataclass(frozen=True)
class EncodedDecoderPrompts:
    """A bag of decoder prompts with their answers, left-padded, ready for teacher forcing.

    Attributes:
        tokens: ``[prompt, pos]`` ids: left padding, the prompt, the answer minus its last token,
            right padding.
        attention_mask: ``[prompt, pos]``, 1 at real tokens, 0 at padding.
        read_pos: ``[prompt]`` the last prompt position (the same for every row: ``P - 1``).
        answer_ids: ``[prompt, answer]`` the answer token ids, right-padded with 0.
        answer_mask: ``[prompt, answer]``, 1 at real answer tokens.
        answer_pos: ``[prompt, answer]`` the position whose logits predict each answer token
            (``read_pos + k``).
    """

    tokens: Int[Tensor, "prompt pos"]
    attention_mask: Int[Tensor, "prompt pos"]
    read_pos: Int[Tensor, " prompt"]
    answer_ids: Int[Tensor, "prompt answer"]
    answer_mask: Int[Tensor, "prompt answer"]
    answer_pos: Int[Tensor, "prompt answer"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def first_answer_ids(self) -> Int[Tensor, " prompt"]:
        """The first answer token of each prompt (the token an answer starts with)."""
        return self.answer_ids[:, 0]

    def select(self, idx: Sequence[int] | Tensor) -> EncodedDecoderPrompts:
        """Rows ``idx``, with the columns that are padding in all of them cut off (the read
        position stays shared)."""
        i = torch.as_tensor(idx, dtype=torch.long, device=self.tokens.device)
        am = self.attention_mask[i]
        p_w = self.prompt_width
        real = am[:, :p_w].sum(0) > 0
        left = int(real.nonzero()[0]) if len(i) and bool(real.any()) else 0
        a_mask = self.answer_mask[i]
        width_a = int(a_mask.sum(-1).max()) if len(i) else 1
        width_a = max(width_a, 1)
        end = p_w + width_a - 1
        read = self.read_pos[i] - left
        return EncodedDecoderPrompts(
            self.tokens[i, left:end],
            am[:, left:end],
            read,
            self.answer_ids[i, :width_a],
            a_mask[:, :width_a],
            read[:, None] + torch.arange(width_a, device=read.device)[None],
        )

    @property
    def prompt_width(self) -> int:
        """``P``: the padded prompt length (``read_pos + 1``)."""
        return int(self.read_pos[0]) + 1 if len(self) else 0

    def to(self, device: str | torch.device | None) -> EncodedDecoderPrompts:
        """The same prompts on ``device`` (``None``: where they are)."""
        if device is None:
            return self
        return EncodedDecoderPrompts(
            *(
                t.to(device)
                for t in (
                    self.tokens,
                    self.attention_mask,
                    self.read_pos,
                    self.answer_ids,
                    self.answer_mask,
                    self.answer_pos,
                )
            )
        )


def _check_prompt(i: int, prompt: str | Sequence[int]) -> None:
    if isinstance(prompt, str):
        if MASK in prompt:
            raise ValueError(
                f"prompt {i} {prompt!r} contains {MASK}: a decoder prompt is the text before the "
                "answer, without [MASK]"
            )
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty")
    elif len(prompt) == 0:
        raise ValueError(f"prompt {i} has no tokens")


def _prompt_ids(model: HookedTransformer, prompt: str | Sequence[int]) -> list[int]:
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: give prompts and answers as token id lists")
    return [int(t) for t in model.to_tokens(prompt, prepend_bos=model.cfg.default_prepend_bos)[0]]


def _answer_ids(
    model: HookedTransformer, i: int, prompt: str | Sequence[int], answer: str | Sequence[int]
) -> list[int]:
    if not isinstance(answer, str):
        ids = [int(t) for t in answer]
    else:
        if not answer.strip():
            raise ValueError(f"the answer for prompt {i} is empty ({answer!r})")
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer: give answers as token id lists")
        text = answer
        if isinstance(prompt, str) and not prompt[-1:].isspace() and not answer[:1].isspace():
            text = " " + answer
        ids = [int(t) for t in model.to_tokens(text, prepend_bos=False)[0]]
    if not ids:
        raise ValueError(f"the answer for prompt {i} ({answer!r}) has no tokens")
    return ids


def encode_decoder(
    model: HookedTransformer,
    prompts: Sequence[str | Sequence[int]],
    answers: str | Sequence[int] | Sequence[str | Sequence[int]] | None,
    *,
    max_tokens: int | None = None,
) -> EncodedDecoderPrompts:
    """Tokenise prompts and their answers (one answer for all, or one per prompt); see the module
    docstring for the tokenisation and the padding. Tensors are on the CPU.

    ``answers=None`` encodes the prompts alone (for reading activations): each gets a one-token
    placeholder answer that is never fed and is masked out (its log-probability is 0). A prompt
    whose prompt and fed answer tokens exceed ``max_tokens`` (default: the model's context) keeps
    its last tokens, and its BOS token where it has one.

    Raises:
        ValueError: a prompt with ``[MASK]``, an empty prompt or answer, a count mismatch.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence of prompts, not one string")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    placeholder = answers is None
    if answers is None:
        answers = [[0]] * len(prompts)
    if not isinstance(answers, str) and len(answers) == 0:
        raise ValueError("the answer is empty (no tokens and no answers given)")
    per_prompt: list[str | Sequence[int]]
    if isinstance(answers, str) or (len(answers) > 0 and isinstance(answers[0], int)):
        per_prompt = [answers] * len(prompts)  # type: ignore[list-item]
    else:
        per_prompt = list(answers)  # type: ignore[arg-type]
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} answers")
    limit = int(max_tokens or model.cfg.n_ctx)
    p_ids, a_ids = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, per_prompt, strict=True)):
        _check_prompt(i, prompt)
        ids = _prompt_ids(model, prompt)
        a = _answer_ids(model, i, prompt, answer)
        room = limit - (len(a) - 1)
        if len(ids) > room:
            if room < 2:
                raise ValueError(f"prompt {i}: its answer alone fills the {limit}-token context")
            bos = isinstance(prompt, str) and model.cfg.default_prepend_bos
            ids = [ids[0], *ids[len(ids) - room + 1 :]] if bos else ids[len(ids) - room :]
        p_ids.append(ids)
        a_ids.append(a)
    n = len(prompts)
    width_p = max(len(p) for p in p_ids)
    width_a = max(len(a) for a in a_ids)
    pad = 0
    if model.tokenizer is not None and model.tokenizer.pad_token_id is not None:
        pad = int(model.tokenizer.pad_token_id)
    tokens = torch.full((n, width_p + width_a - 1), pad, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    answer_ids = torch.zeros(n, width_a, dtype=torch.long)
    answer_mask = torch.zeros(n, width_a, dtype=torch.long)
    for i, (p, a) in enumerate(zip(p_ids, a_ids, strict=True)):
        seq = p + a[:-1]
        start = width_p - len(p)
        tokens[i, start : start + len(seq)] = torch.tensor(seq)
        mask[i, start : start + len(seq)] = 1
        answer_ids[i, : len(a)] = torch.tensor(a)
        answer_mask[i, : len(a)] = 0 if placeholder else 1
    read_pos = torch.full((n,), width_p - 1, dtype=torch.long)
    answer_pos = read_pos[:, None] + torch.arange(width_a)[None]
    return EncodedDecoderPrompts(tokens, mask, read_pos, answer_ids, answer_mask, answer_pos)


def template_to_prompt(template: str, subject: str) -> str | None:
    """A PARAREL template as a decoder prompt: the text before ``[Y]``, with ``[X]`` filled in, or
    ``None`` when ``[Y]`` comes before ``[X]`` (the subject would follow the answer).

    ``"The official language of [X] is the [Y] language."`` -> ``"The official language of France
    is the"`` (trailing whitespace removed: the answer brings its own leading space).
    """
    if template.count("[X]") != 1 or template.count("[Y]") != 1:
        raise ValueError(f"template {template!r} needs exactly one [X] and one [Y]")
    x, y = template.index("[X]"), template.index("[Y]")
    if y < x:
        return None
    prompt = template[:y].replace("[X]", subject).rstrip()
    if not prompt:
        raise ValueError(f"template {template!r} has no text before [Y]")
    return prompt


def templates_to_prompts(templates: Sequence[str], subject: str) -> tuple[list[str], int]:
    """The decoder prompts of a relation's templates and the number of templates skipped because
    ``[Y]`` comes first."""
    out, skipped = [], 0
    for t in templates:
        p = template_to_prompt(t, subject)
        if p is None:
            skipped += 1
        else:
            out.append(p)
    return out, skipped


class _AnswerLogprob(torch.autograd.Function):
    """``sum_k mask_k (logits[k, a_k] - logsumexp(logits[k]))`` with a lean backward: one pass
    ``-g softmax(logits)`` plus ``g`` at the answer ids, instead of autograd's ``log_softmax`` and
    ``gather`` backward (two more passes over the ``[row, seg, vocab]`` logits and a zero fill)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, ids[:, :, None])[:, :, 0]
        ctx.save_for_backward(logits, lse, ids, mask)
        return ((picked - lse) * mask).sum(-1)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None, None]:
        logits, lse, ids, mask = ctx.saved_tensors
        g = grads[0][:, None] * mask  # [row, seg]
        grad = torch.sub(logits, lse[:, :, None]).exp_().mul_(-g[:, :, None])
        grad.scatter_add_(-1, ids[:, :, None], g[:, :, None])
        return grad, None, None


def _answer_logprob_from_logits(
    logits: Float[Tensor, "row seg vocab"],
    answer_ids: Int[Tensor, "row answer"],
    answer_mask: Int[Tensor, "row answer"],
) -> Float[Tensor, " row"]:
    out: Tensor = _AnswerLogprob.apply(logits, answer_ids, answer_mask.to(logits.dtype))
    return out


def answer_logprob(
    model: HookedTransformer, enc: EncodedDecoderPrompts, *, fwd_hooks: HookList | Sequence = ()
) -> Float[Tensor, " prompt"]:
    """``log p(answer | prompt)`` per prompt: the sum of the teacher-forced answer tokens'
    log-probabilities, optionally under ``fwd_hooks`` (TransformerLens ``(name, fn)`` pairs). On the
    CPU, no gradient."""
    dev = model.cfg.device
    enc = enc.to(dev)
    with torch.no_grad():
        logits = model.run_with_hooks(
            enc.tokens, attention_mask=enc.attention_mask, fwd_hooks=list(fwd_hooks)
        )
    seg = logits[:, enc.prompt_width - 1 :]
    return _answer_logprob_from_logits(seg, enc.answer_ids, enc.answer_mask).cpu()


def next_token(
    model: HookedTransformer, enc: EncodedDecoderPrompts, *, fwd_hooks: HookList | Sequence = ()
) -> Int[Tensor, " prompt"]:
    """The top-1 next token at each prompt's read position (the model's own answer start)."""
    dev = model.cfg.device
    enc = enc.to(dev)
    with torch.no_grad():
        logits = model.run_with_hooks(
            enc.tokens[:, : enc.prompt_width],
            attention_mask=enc.attention_mask[:, : enc.prompt_width],
            fwd_hooks=list(fwd_hooks),
        )
    return logits[:, -1].argmax(-1).cpu()


# ---------------------------------------------------------------------------------------------
# Integrated gradients with the causal structure
# ---------------------------------------------------------------------------------------------


@dataclass
class _Clean:
    """One clean pass over a group: the prefix's keys and values per layer, the residual stream at
    the segment (read position and fed answer tokens) entering each block from the lowest scored
    layer up (``resid_in[n_layers]`` is the last block's output), each scored layer's
    ``hook_resid_mid`` and ``hook_post`` at the read position, and the clean answer
    log-probabilities."""

    cache: TransformerLensKeyValueCache
    resid_in: dict[int, Tensor]  # block j -> [prompt, seg, d_model] entering block j
    resid_mid: dict[int, Tensor]  # scored layer -> [prompt, d_model] at the read position
    acts: Tensor  # [prompt, len(layers), d_mlp]
    logprob: Tensor  # [prompt]


def _layer_of(hook: Any) -> int:
    return int(hook.name.split(".")[1])


def _clean_pass(
    model: HookedTransformer, enc: EncodedDecoderPrompts, layers: list[int], keep_resid: bool
) -> _Clean:
    dev = enc.tokens.device
    n, p_w = len(enc), enc.prompt_width
    n_layers = model.cfg.n_layers
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, dev, n)
    resid_in: dict[int, Tensor] = {}
    resid_mid: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}

    def keep_block_input(j: int) -> Any:
        def keep(module: Any, args: tuple, kwargs: dict) -> None:
            resid_in[j] = (args[0] if args else kwargs["resid_pre"]).detach()

        return keep

    def keep_last(t: Tensor, hook: Any) -> None:
        resid_in[n_layers] = t.detach()

    def keep_mid(t: Tensor, hook: Any) -> None:
        resid_mid[_layer_of(hook)] = t[:, 0].detach()

    def keep_post(t: Tensor, hook: Any) -> None:
        acts[_layer_of(hook)] = t[:, 0].detach()

    hooks: HookList = [(hook_name(layer), keep_post) for layer in layers]
    if keep_resid:
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", keep_last))
        if _joins_after_block(model):
            hooks += [(f"blocks.{layer}.hook_resid_mid", keep_mid) for layer in layers]
    with torch.no_grad():
        if p_w > 1:  # the prefix (positions before the read position) fills the cache
            model(
                enc.tokens[:, : p_w - 1],
                attention_mask=enc.attention_mask[:, : p_w - 1],
                past_kv_cache=cache,
                return_type=None,  # no unembedding: nothing reads the prefix's logits
            )
        cache.freeze()
        # a block's input before its hook_resid_pre fires (rows that join there fire it again)
        handles = (
            [
                model.blocks[j].register_forward_pre_hook(keep_block_input(j), with_kwargs=True)
                for j in range(min(layers), n_layers)
            ]
            if keep_resid
            else []
        )
        seg = slice(p_w - 1, None)
        try:
            with model.hooks(fwd_hooks=hooks):
                resid = model(
                    enc.tokens[:, seg],
                    attention_mask=enc.attention_mask[:, seg],
                    past_kv_cache=cache,
                    stop_at_layer=n_layers,  # the head below, without copying W_U
                )
                logits = _logits(model, resid)
        finally:
            for handle in handles:
                handle.remove()
    logprob = _answer_logprob_from_logits(logits, enc.answer_ids, enc.answer_mask)
    return _Clean(
        cache, resid_in, resid_mid, torch.stack([acts[layer] for layer in layers], dim=1), logprob
    )


def _joins_after_block(model: HookedTransformer) -> bool:
    """Whether a row scaled at layer ``l`` can skip block ``l`` except its MLP output at the read
    position: the block is ``resid_mid + hook_mlp_out(W_out hook_post + b_out)`` with a plain
    (``MLP``) or gated (``GatedMLP``) TransformerLens MLP and no norm after the MLP. Otherwise
    (parallel attention and MLP, post-norm, layer-norm activations, other MLP classes) the row runs
    all of block ``l`` on its segment, which is as exact and a little slower."""
    cfg = model.cfg
    return (
        not cfg.attn_only
        and not cfg.parallel_attn_mlp
        and not cfg.use_normalization_before_and_after
        and not cfg.is_layer_norm_activation()
        and cfg.original_architecture not in POST_NORM_ARCHITECTURES
        and all(type(b.mlp) in (MLP, GatedMLP) for b in model.blocks)
    )


def _mlp_output(block: Any, post: Tensor) -> Tensor:
    """``W_out post + b_out`` as TransformerLens' ``MLP`` / ``GatedMLP.forward`` computes it."""
    mlp = block.mlp
    if type(mlp) is GatedMLP:
        return torch.nn.functional.linear(post, mlp.W_out.T.contiguous(), mlp.b_out)
    return batch_addmm(mlp.b_out, mlp.W_out, post)


def _logits(model: HookedTransformer, resid: Tensor) -> Tensor:
    """The end of ``HookedTransformer.forward`` from the last block's output: ``ln_final``,
    ``unembed`` with its hook points and the logit soft-cap. The unembedding is ``resid @ W_U +
    b_U`` on ``W_U`` as stored (the module copies a transposed ``W_U`` on every call: the whole
    unembedding, for each chunk)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    unembed = model.unembed
    x = unembed.hook_in(resid)
    w_u = unembed.W_U.detach()
    flat = torch.addmm(unembed.b_U.detach(), x.reshape(-1, x.shape[-1]), w_u)
    logits = unembed.hook_out(flat.view(*x.shape[:-1], w_u.shape[-1]))
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def _ig_group(
    model: HookedTransformer,
    enc: EncodedDecoderPrompts,
    layers: list[int],
    steps: int,
    batch_size: int,
) -> Tensor:
    """IG scores ``[prompt, len(layers), d_mlp]`` for one group of prompts."""
    dev = enc.tokens.device
    n_prompts, n_sel = len(enc), len(layers)
    n_layers = model.cfg.n_layers
    clean = _clean_pass(model, enc, layers, keep_resid=True)
    acts = clean.acts
    after_block = _joins_after_block(model)

    # Rows in (prompt, layer, alpha) order; a chunk is sorted by layer so rows join bottom-up.
    prompt = torch.arange(n_prompts, device=dev).repeat_interleave(n_sel * steps)
    sel = torch.arange(n_sel, device=dev).repeat_interleave(steps).repeat(n_prompts)
    k = torch.arange(steps, device=dev).repeat(n_prompts * n_sel)
    block = torch.tensor(layers, device=dev)[sel]
    acc = torch.promote_types(acts.dtype, torch.float32)
    alpha = k.to(acc) / steps
    grad_sum = torch.zeros(n_prompts * n_sel, acts.shape[-1], dtype=acc, device=dev)

    # While the rows of layer l join, their hook_post at the read position becomes the scaled
    # leaf. joining = (n_old, leaf rows): with after_block the hook sees the joining rows' read
    # position alone; otherwise the whole batch at block l, whose first n_old rows pass unchanged.
    joining: list[Any] = [None]

    def put_scaled(act: Tensor, hook: Any) -> Tensor:
        if joining[0] is None:
            return act
        n_old, leaf_j = joining[0]
        if after_block:
            return leaf_j[:, None].to(act.dtype)
        new = torch.cat([leaf_j[:, None].to(act.dtype), act[n_old:, 1:]], dim=1)
        return torch.cat([act[:n_old], new]) if n_old else new

    def run_block(j: int, resid: Tensor, rows: Tensor) -> Tensor:
        entry = clean.cache[j]
        keys, values = entry.past_keys, entry.past_values
        if keys.shape[0] == 1:  # one prompt: a view, no copy per row
            keys, values = keys.expand(len(rows), -1, -1, -1), values.expand(len(rows), -1, -1, -1)
        else:
            keys, values = keys[rows], values[rows]
        past = TransformerLensKeyValueCacheEntry(keys, values, frozen=True)
        return model.blocks[j](
            resid, past_kv_cache_entry=past, attention_mask=enc.attention_mask[rows]
        )

    def rows_after_block(j: int, rows: Tensor, leaf_j: Tensor, sel_j: Tensor) -> Tensor:
        """The joining rows' segment after block ``j``: clean except the read position, which is
        ``resid_mid + hook_mlp_out(W_out hook_post(scaled) + b_out)``."""
        blk: Any = model.blocks[j]
        joining[0] = (0, leaf_j)
        try:
            post = blk.mlp.hook_post(acts[rows, sel_j][:, None])
        finally:
            joining[0] = None
        mlp_out = blk.hook_mlp_out(_mlp_output(blk, post))
        read = blk.hook_resid_post(clean.resid_mid[j][rows][:, None] + mlp_out)
        return torch.cat([read, clean.resid_in[j + 1][rows][:, 1:]], dim=1)

    hooks: HookList = [(hook_name(layer), put_scaled) for layer in layers]
    n_rows = len(sel)
    with no_param_grads(model), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        for c0 in range(0, n_rows, batch_size):
            c1 = min(c0 + batch_size, n_rows)
            perm = c0 + torch.sort(block[c0:c1], stable=True).indices
            c_sel, c_prompt, c_block = sel[perm], prompt[perm], block[perm]
            leaf = (alpha[perm, None] * acts[c_prompt, c_sel]).to(acts.dtype)
            leaf.requires_grad_(True)
            blocks_here = c_block.tolist()
            resid: Tensor | None = None
            for j in range(blocks_here[0], n_layers):
                n_old = 0 if resid is None else resid.shape[0]
                joins = j in blocks_here
                if joins:
                    start = blocks_here.index(j)
                    stop = len(blocks_here) - blocks_here[::-1].index(j)
                if after_block:
                    if resid is not None:
                        resid = run_block(j, resid, c_prompt[:n_old])
                    if joins:
                        new = rows_after_block(
                            j, c_prompt[start:stop], leaf[start:stop], c_sel[start:stop]
                        )
                        resid = new if resid is None else torch.cat([resid, new])
                    continue
                if joins:
                    new = clean.resid_in[j][c_prompt[start:stop]]
                    resid = new if resid is None else torch.cat([resid, new])
                    joining[0] = (n_old, leaf[start:stop])
                assert resid is not None
                try:
                    resid = run_block(j, resid, c_prompt[: resid.shape[0]])
                finally:
                    joining[0] = None
            assert resid is not None
            logits = _logits(model, resid)
            logp = _answer_logprob_from_logits(
                logits, enc.answer_ids[c_prompt], enc.answer_mask[c_prompt]
            )
            (grad,) = torch.autograd.grad(logp.exp().sum(), leaf)
            grad_sum.index_add_(0, c_prompt * n_sel + c_sel, grad.to(acc))
    return acts * grad_sum.view(n_prompts, n_sel, -1) / steps


def decoder_attribute(
    model: HookedTransformer,
    prompts: Sequence[str | Sequence[int]],
    answer: str | Sequence[int],
    *,
    steps: int = 20,
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
    method: Literal["ig", "activation"] | str = "ig",
) -> Float[Tensor, "prompt layer d_mlp"]:
    """Attribution scores of every MLP neuron at each prompt's last position for ``answer``.

    Integrated gradients of ``p(answer | prompt)`` (the product of the teacher-forced token
    probabilities) with respect to ``blocks.{l}.mlp.hook_post`` at the last prompt position, zero
    baseline, the left Riemann sum of :mod:`kn_lens.attribution`:
    ``a_i * (1/m) * sum_{k<m} dp(alpha_k a)/d(alpha_k a_i)`` with ``alpha_k = k/m``.
    ``method="activation"`` gives the raw activation there.

    The exact scores of one full forward and backward per layer and step, computed with less work:

    - positions before the read position are clean at every layer: one clean pass fills a
      key/value cache with them (TransformerLens' own ``TransformerLensKeyValueCache``) and keeps,
      at the segment (the read position and the fed answer tokens), the input of every block from
      the lowest scored layer up, and each scored layer's ``hook_resid_mid`` and ``hook_post`` at
      the read position;
    - scaling at layer ``l`` changes nothing in block ``l`` but its MLP output at the read
      position (the answer positions of block ``l`` attend to the read position's layer-``l`` keys
      and values, which come before the MLP). So a row (one prompt, one alpha, one layer) computes
      ``hook_resid_post = resid_mid + hook_mlp_out(W_out hook_post + b_out)`` at the read position,
      with ``hook_post`` replaced by the scaled activation through a hook (callers' hooks on it
      still fire first), takes the clean block output at the answer positions, and joins at block
      ``l + 1``. Blocks ``l + 1 .. L-1`` run on the segment positions only, attending over the
      cached prefix keys/values plus their own (rotary positions and grouped-query attention as
      TransformerLens computes them with a cache), then the final norm and the unembedding at the
      segment. Models whose block does not split that way (parallel attention and MLP, post-norm,
      layer-norm activations, other MLP classes) run all of block ``l`` on the segment instead;
    - rows of several layers share a batch: a chunk of at most ``batch_size`` rows runs bottom-up
      and rows join at their layer; autograd records only what depends on the scaled activation.
    - blocks run as TransformerLens modules and hook points, so hooks a caller attached fire;
      where only the segment (or, in block ``l``, the read position) is recomputed, they see those
      positions only, so position-wise hooks act exactly as in a full forward.

    Args:
        model: a ``HookedTransformer`` (with ``tokenizer`` for string prompts).
        prompts: ``P`` prompts (strings, or token id lists used as given).
        answer: the answer (a string or token ids), one or more tokens.
        steps: ``m``. batch_size: rows per forward/backward (bounds memory; prompts are also
            grouped by at most ``batch_size``); default
            :func:`kn_lens.config.default_batch_size` of the model's device. layers: which
            layers (default all).

    Memory: a group of at most ``batch_size`` prompts keeps its prefix keys/values and the segment's
    residual stream per layer; a chunk of at most ``batch_size`` rows holds its autograd graph
    (activations of ``batch_size x S`` positions per block, the ``[batch_size, S, d_vocab]``
    logits) plus the weight copies TransformerLens' modules make per call and autograd keeps (at
    most about one copy of the block weights). Measured with one CPU thread, float32: GPT-2-small
    shape, one 12-token prompt and a 2-token answer, peak resident memory +233 / +360 / +727 MiB
    over the loaded model at ``batch_size`` 16 / 64 / 256; a SmolLM2-135M-shaped random model,
    five prompts of 7-11 tokens, 2-token answer, ``batch_size=64``: +1034 MiB.

    Returns:
        ``[P, len(layers), d_mlp]`` on the CPU in the model's dtype.
    """
    if method not in ("ig", "activation"):
        raise ValueError(f"unknown method {method!r}; use one of ('ig', 'activation')")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if batch_size is None:
        batch_size = default_batch_size(model.cfg.device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if model.cfg.positional_embedding_type == "shortformer":
        raise ValueError("shortformer positional embeddings are not supported")
    sel_layers = resolve_layers(model, layers)
    full = encode_decoder(model, prompts, answer)  # validates every prompt
    lengths = full.attention_mask.sum(-1).tolist()
    by_length = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    d_mlp = model.cfg.d_mlp
    assert d_mlp is not None
    out = torch.empty(len(prompts), len(sel_layers), d_mlp, dtype=model.cfg.dtype)
    for g0 in range(0, len(by_length), batch_size):
        idx = by_length[g0 : g0 + batch_size]
        group = encode_decoder(model, [prompts[i] for i in idx], answer).to(model.cfg.device)
        if method == "activation":
            scores = _clean_pass(model, group, sel_layers, keep_resid=False).acts
        else:
            scores = _ig_group(model, group, sel_layers, steps, batch_size)
        out[torch.tensor(idx)] = scores.detach().to("cpu", model.cfg.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# The decoder family (kn_lens.models.family)
# ---------------------------------------------------------------------------------------------


class DecoderFamily:
    """Decoders: the text before the answer, answers of any length, read at the last prompt
    position. An update writes the unembedding direction of the answer's first token."""

    name = "decoder"

    def usable_bags(self, model: HookedTransformer, bags: Sequence[FactBag]) -> BagCheck:
        """Each bag as a decoder bag (:meth:`kn_lens.data.facts.FactBag.to_prefix_bag`): its
        prompts cut before the answer, dropping templates whose answer comes before the subject;
        a bag with no prompt left is skipped. Answers of any token length are kept."""
        kept: list[FactBag] = []
        skipped: list[tuple[FactBag, str]] = []
        dropped: dict[str, int] = {}
        for bag in bags:
            new, n_dropped = bag.to_prefix_bag()
            dropped[bag.relation] = dropped.get(bag.relation, 0) + n_dropped
            if new is None:
                skipped.append((bag, "every prompt has the answer before the subject"))
            else:
                kept.append(new)
        return BagCheck(kept, skipped, dropped)

    def model_prompt(self, prompt: str) -> str | None:
        """A masked prompt's text before ``[MASK]`` (``None`` when there is none)."""
        return prefix_prompt(prompt)

    def encode(
        self,
        model: HookedTransformer,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> EncodedDecoderPrompts:
        """:func:`encode_decoder` (left-padded; ``read_pos`` is the last prompt position)."""
        limit = None if max_tokens is None else min(int(max_tokens), int(model.cfg.n_ctx))
        return encode_decoder(
            model, list(prompts), None if answers is None else list(answers), max_tokens=limit
        )

    def forward(self, model: HookedTransformer, batch: EncodedDecoderPrompts) -> None:
        """One plain forward pass over the prompts (hooks attached by the caller fire)."""
        b = batch.to(model.cfg.device)
        p_w = b.prompt_width
        model(b.tokens[:, :p_w], attention_mask=b.attention_mask[:, :p_w], return_type=None)

    def readout(
        self,
        model: HookedTransformer,
        batch: EncodedDecoderPrompts,
        *,
        fwd_hooks: Sequence[Hook] = (),
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]:
        """Next-token logits at the read position and ``log p(answer | prompt)`` (teacher forced),
        from one forward pass."""
        b = batch.to(model.cfg.device)
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(b.tokens, attention_mask=b.attention_mask)
        seg = logits[:, b.prompt_width - 1 :]
        logp = _answer_logprob_from_logits(seg, b.answer_ids, b.answer_mask)
        return seg[:, 0], logp

    def first_token(self, model: HookedTransformer, answer: str | int) -> int:
        """The first token of the answer as it follows a prompt (leading-space rule)."""
        if isinstance(answer, str):
            return _answer_ids(model, 0, "x", answer)[0]
        tid = int(answer)
        if not 0 <= tid < int(model.cfg.d_vocab):
            raise ValueError(f"token id {tid} is out of range of the vocabulary")
        return tid

    def answer_direction(self, model: HookedTransformer, token: int) -> Float[Tensor, " d_model"]:
        """The unembedding direction of ``token``, ``W_U[:, token]``: the residual direction that
        raises that token's logit. (The paper's word embedding ``W_E[token]`` is an input-side
        direction; in a decoder the MLP output is read by the unembedding, so an update writes
        the output-side direction. With tied embeddings, as in SmolLM2, the two are the same.)"""
        return model.W_U.detach()[:, token].clone()
