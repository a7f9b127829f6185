"""Masked prompts as model input: validation, tokenisation and the prediction at ``[MASK]``.

Every analysis turns prompts into tokens here, and reads the model's answer at the ``[MASK]``
position through :func:`mask_logits`, so padding, truncation and the one-``[MASK]`` rule are
handled once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from kn_lens.data.facts import MASK, BagCheck, FactBag, check_prompt
from kn_lens.errors import AttributionError
from kn_lens.models.backend import EncoderModel, is_bridge
from kn_lens.neuron import Hook


@dataclass
class EncodedPrompts:
    """A right-padded batch of prompts.

    Attributes:
        tokens: ``[prompt, pos]`` token ids.
        token_type_ids: ``[prompt, pos]`` segment ids (all zero).
        attention_mask: ``[prompt, pos]``, 1 for real tokens, 0 for padding.
        mask_pos: ``[prompt]`` position of the single ``[MASK]`` of each prompt.
        answer_ids: ``[prompt]`` each prompt's answer token, when answers were given to
            :func:`encode` (``None`` otherwise).
    """

    tokens: Int[Tensor, "prompt pos"]
    token_type_ids: Int[Tensor, "prompt pos"]
    attention_mask: Int[Tensor, "prompt pos"]
    mask_pos: Int[Tensor, " prompt"]
    answer_ids: Int[Tensor, " prompt"] | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def read_pos(self) -> Int[Tensor, " prompt"]:
        """Where the fact is read: the ``[MASK]`` (the name both model families share)."""
        return self.mask_pos

    @property
    def first_answer_ids(self) -> Int[Tensor, " prompt"]:
        """The answer token of each prompt (an encoder answer is one token)."""
        if self.answer_ids is None:
            raise AttributionError("these prompts were encoded without answers")
        return self.answer_ids

    def to(self, device: torch.device | str) -> EncodedPrompts:
        return EncodedPrompts(
            self.tokens.to(device),
            self.token_type_ids.to(device),
            self.attention_mask.to(device),
            self.mask_pos.to(device),
            None if self.answer_ids is None else self.answer_ids.to(device),
        )

    def select(self, idx: Int[Tensor, " n"] | Sequence[int]) -> EncodedPrompts:
        """Rows ``idx``, trimmed to their longest real length."""
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.tokens.device)
        am = self.attention_mask[idx_t]
        width = int(am.sum(-1).max().item()) if len(idx_t) else 0
        return EncodedPrompts(
            self.tokens[idx_t, :width],
            self.token_type_ids[idx_t, :width],
            am[:, :width],
            self.mask_pos[idx_t],
            None if self.answer_ids is None else self.answer_ids[idx_t.to(self.answer_ids.device)],
        )


#: Where an answer's token id is read from: the model (its attached tokenizer) or a tokenizer.
ModelOrTokenizer = EncoderModel | PreTrainedTokenizerBase


def _tokenizer(model_or_tokenizer: ModelOrTokenizer) -> PreTrainedTokenizerBase:
    if isinstance(model_or_tokenizer, PreTrainedTokenizerBase):
        return model_or_tokenizer
    tok = model_or_tokenizer.tokenizer
    if tok is None:
        raise AttributionError(
            "the model has no tokenizer attached; load it with kn_lens.load_model"
        )
    return tok


def answer_token_id(model_or_tokenizer: ModelOrTokenizer, answer: str) -> int:
    """The vocabulary id of ``answer``; ``ValueError`` naming it if it is not exactly one token."""
    tok = _tokenizer(model_or_tokenizer)
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tok.unk_token_id:
        pieces = tok.convert_ids_to_tokens(ids)
        raise AttributionError(
            f"answer {answer!r} is not a single vocabulary token (tokenises to {pieces})"
        )
    return int(ids[0])


def token_id(model: EncoderModel, answer: str | int | Tensor) -> int:
    """A vocabulary id from an answer string (exactly one token) or a token id (range-checked).

    Raises ``ValueError`` naming the answer when it is several tokens, unknown, out of the
    vocabulary's range, or neither a string nor an integer.
    """
    if isinstance(answer, str):
        return answer_token_id(model, answer)
    if isinstance(answer, bool) or not (
        isinstance(answer, int) or (isinstance(answer, Tensor) and answer.numel() == 1)
    ):
        raise AttributionError(f"expected an answer string or a token id, not {answer!r}")
    tid = int(answer)
    d_vocab = int(model.cfg.d_vocab)
    if not 0 <= tid < d_vocab:
        raise AttributionError(f"token id {tid} is out of range of the vocabulary [0, {d_vocab})")
    return tid


def answer_token_ids(
    model_or_tokenizer: ModelOrTokenizer, answers: Sequence[str]
) -> Int[Tensor, " n"]:
    """:func:`answer_token_id` for each answer."""
    return torch.tensor([answer_token_id(model_or_tokenizer, a) for a in answers], dtype=torch.long)


def encode(
    model: EncoderModel,
    prompts: Sequence[str],
    *,
    max_tokens: int | None = None,
    device: torch.device | str | None = None,
    answers: Sequence[str] | None = None,
) -> EncodedPrompts:
    """Tokenise ``prompts`` (each with exactly one ``[MASK]``) into a right-padded batch, with
    each prompt's answer token when ``answers`` (one per prompt, each one vocabulary token) are
    given.

    A prompt longer than ``max_tokens`` (default: the model's context, ``cfg.n_ctx``) is cut to a
    window of that many tokens that keeps ``[CLS]``, ``[SEP]`` and the ``[MASK]``, so the mask is
    never truncated away.
    """
    if isinstance(prompts, str):
        raise AttributionError("prompts must be a sequence of strings, not one string")
    if len(prompts) == 0:
        raise AttributionError("no prompts given")
    for p in prompts:
        check_prompt(p)
    tok = _tokenizer(model)
    limit = int(max_tokens or model.cfg.n_ctx)
    rows: list[list[int]] = []
    mask_pos: list[int] = []
    for p, ids in zip(
        prompts, tok(list(prompts), add_special_tokens=True)["input_ids"], strict=False
    ):
        hits = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
        if len(hits) != 1:
            raise AttributionError(
                f"prompt must tokenise to exactly one {MASK}, found {len(hits)}: {p!r}"
            )
        m = hits[0]
        if len(ids) > limit:
            body = ids[1:-1]
            keep = limit - 2
            start = min(max(0, (m - 1) - keep // 2), len(body) - keep)
            ids = [ids[0], *body[start : start + keep], ids[-1]]
            m = m - 1 - start + 1
        rows.append(ids)
        mask_pos.append(m)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    ids = None
    if answers is not None:
        if len(answers) != len(prompts):
            raise AttributionError(f"{len(prompts)} prompts but {len(answers)} answers")
        ids = answer_token_ids(model, answers)
    dev = device if device is not None else model.cfg.device
    enc = EncodedPrompts(tokens, torch.zeros_like(tokens), attn, torch.tensor(mask_pos), ids)
    return enc.to(dev) if dev is not None else enc


def logits_at_mask(
    model: EncoderModel,
    resid: Float[Tensor, "batch pos d_model"],
    mask_pos: Int[Tensor, " batch"],
) -> Float[Tensor, "batch d_vocab"]:
    """The MLM head (``mlm_head`` then ``unembed``) applied to the final residual stream at each
    row's ``[MASK]`` position only, instead of at every position.

    The unembedding is ``Unembed.forward``'s own computation, with its ``hook_in`` / ``hook_out``,
    except that it multiplies by ``W_U`` as stored: ``Unembed.forward`` first copies ``W_U.T`` into
    a contiguous ``[d_vocab, d_model]`` matrix on every call (89 MB, about 0.14 s on a CPU for
    bert-base), which here cost more than the matrix product it feeds.

    On a ``TransformerBridge`` the head is the Hugging Face model's ``cls`` (the bridge's
    ``mlm_head`` and ``unembed`` are parts of it).
    """
    at_mask = resid[torch.arange(resid.shape[0], device=resid.device), mask_pos.to(resid.device)]
    if is_bridge(model):  # on the bridge, mlm_head and unembed mean something else
        hf: Any = model.original_model
        return hf.cls(at_mask[:, None])[:, 0]
    unembed = model.unembed
    head = unembed.hook_in(model.mlm_head(at_mask[:, None]))
    return unembed.hook_out(head @ unembed.W_U + unembed.b_U)[:, 0]


def encoder_output(model: EncoderModel, enc: EncodedPrompts) -> Float[Tensor, "prompt pos d_model"]:
    """The encoder's last hidden states (the residual stream after the last block) for ``enc``
    (on the model's device): ``HookedEncoder.encoder_output``, or on a ``TransformerBridge`` the
    Hugging Face encoder body, whose layers are the bridge's blocks (TransformerLens hooks
    fire)."""
    if is_bridge(model):
        hf: Any = model.original_model
        mask = enc.attention_mask
        return hf.base_model(
            input_ids=enc.tokens, attention_mask=mask, token_type_ids=enc.token_type_ids
        ).last_hidden_state
    return model.encoder_output(enc.tokens, enc.token_type_ids, enc.attention_mask)


def mask_logits(
    model: EncoderModel,
    prompts: Sequence[str] | EncodedPrompts,
    *,
    fwd_hooks: Sequence[Hook] = (),
    batch_size: int = 64,
) -> Float[Tensor, "prompt d_vocab"]:
    """The model's logits at each prompt's ``[MASK]``, optionally under ``fwd_hooks``.

    The hooks are TransformerLens ``(name, fn)`` pairs, attached with ``model.hooks`` and always
    removed afterwards. The MLM head runs only at the ``[MASK]`` positions. No autograd.
    """
    enc = prompts if isinstance(prompts, EncodedPrompts) else encode(model, prompts)
    enc = enc.to(str(model.cfg.device))
    out = []
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        for s in range(0, len(enc), batch_size):
            b = enc.select(range(s, min(s + batch_size, len(enc))))
            resid = encoder_output(model, b)
            out.append(logits_at_mask(model, resid, b.mask_pos))
    return torch.cat(out)


def mask_probs(
    model: EncoderModel,
    prompts: Sequence[str] | EncodedPrompts,
    targets: Int[Tensor, " prompt"] | Sequence[int],
    *,
    fwd_hooks: Sequence[Hook] = (),
    batch_size: int = 64,
) -> Float[Tensor, " prompt"]:
    """Probability of token ``targets[i]`` at prompt i's ``[MASK]`` (softmax over the
    vocabulary)."""
    logits = mask_logits(model, prompts, fwd_hooks=fwd_hooks, batch_size=batch_size)
    t = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    return logits.softmax(-1).gather(-1, t[:, None])[:, 0]


def filter_single_token(
    bags: Sequence[FactBag],
    tokenizer: ModelOrTokenizer,
    *,
    on_error: Literal["skip", "raise"] = "skip",
) -> BagCheck:
    """Keep bags whose object is exactly one vocabulary token (the paper keeps only these).

    With ``on_error="raise"`` the first offending object raises ``ValueError`` naming it and its
    fact; with ``"skip"`` it is dropped and counted in the returned
    :class:`~kn_lens.data.facts.BagCheck`.
    """
    kept, skipped = [], []
    for bag in bags:
        try:
            answer_token_id(tokenizer, bag.object)
        except ValueError as e:
            if on_error == "raise":
                raise AttributionError(f"fact {bag.key} ({bag.subject!r}): {e}") from None
            skipped.append((bag, str(e)))
        else:
            kept.append(bag)
    return BagCheck(kept, skipped)
