"""Decoder prompts and answers as model input (the decoder family's batching).

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

import torch
from jaxtyping import Int
from torch import Tensor

from kn_lens.errors import AttributionError
from kn_lens.models.backend import DecoderModel

__all__ = ["EncodedDecoderPrompts", "encode_decoder", "tokenize_answer"]

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
            raise AttributionError(
                f"prompt {i} {prompt!r} contains {MASK}: a decoder prompt is the text before the "
                "answer, without [MASK]"
            )
        if not prompt.strip():
            raise AttributionError(f"prompt {i} is empty")
    elif len(prompt) == 0:
        raise AttributionError(f"prompt {i} has no tokens")


def _prompt_ids(model: DecoderModel, prompt: str | Sequence[int]) -> list[int]:
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    if model.tokenizer is None:
        raise AttributionError(
            "the model has no tokenizer: give prompts and answers as token id lists"
        )
    return [int(t) for t in model.to_tokens(prompt, prepend_bos=model.cfg.default_prepend_bos)[0]]


def tokenize_answer(
    model: DecoderModel, i: int, prompt: str | Sequence[int], answer: str | Sequence[int]
) -> list[int]:
    if not isinstance(answer, str):
        ids = [int(t) for t in answer]
    else:
        if not answer.strip():
            raise AttributionError(f"the answer for prompt {i} is empty ({answer!r})")
        if model.tokenizer is None:
            raise AttributionError("the model has no tokenizer: give answers as token id lists")
        text = answer
        if isinstance(prompt, str) and not prompt[-1:].isspace() and not answer[:1].isspace():
            text = " " + answer
        ids = [int(t) for t in model.to_tokens(text, prepend_bos=False)[0]]
    if not ids:
        raise AttributionError(f"the answer for prompt {i} ({answer!r}) has no tokens")
    return ids


def encode_decoder(
    model: DecoderModel,
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
        raise AttributionError("prompts must be a sequence of prompts, not one string")
    if len(prompts) == 0:
        raise AttributionError("no prompts given")
    placeholder = answers is None
    if answers is None:
        answers = [[0]] * len(prompts)
    if not isinstance(answers, str) and len(answers) == 0:
        raise AttributionError("the answer is empty (no tokens and no answers given)")
    per_prompt: list[str | Sequence[int]]
    if isinstance(answers, str) or (len(answers) > 0 and isinstance(answers[0], int)):
        per_prompt = [answers] * len(prompts)  # type: ignore[list-item]
    else:
        per_prompt = list(answers)  # type: ignore[arg-type]
        if len(per_prompt) != len(prompts):
            raise AttributionError(f"{len(prompts)} prompts but {len(per_prompt)} answers")
    limit = int(max_tokens or model.cfg.n_ctx)
    p_ids, a_ids = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, per_prompt, strict=True)):
        _check_prompt(i, prompt)
        ids = _prompt_ids(model, prompt)
        a = tokenize_answer(model, i, prompt, answer)
        room = limit - (len(a) - 1)
        if len(ids) > room:
            if room < 2:
                raise AttributionError(
                    f"prompt {i}: its answer alone fills the {limit}-token context"
                )
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
