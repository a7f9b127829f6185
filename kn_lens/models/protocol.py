"""The model-family interface: the few things that differ between encoders and decoders.

Every analysis, CLI step and report works on either family through
:func:`kn_lens.models.family.family_of`; none of them branches on the family, and nothing outside
``kn_lens/models/`` looks at a model's class. A family says:

- which facts it can use and how a fact's prompts look to it (:meth:`Family.usable_bags`,
  :meth:`Family.model_prompt`): an encoder reads masked prompts, a decoder the text before the
  answer;
- how prompts and answers become model input, and where the fact is read
  (:meth:`Family.encode`; the batch's ``read_pos``: the ``[MASK]``, or the last prompt position);
- the answer's probability and the prediction at the read position (:meth:`Family.readout`);
- the token an answer starts with (:meth:`Family.first_token`) and the direction an update writes
  for it (:meth:`Family.answer_direction`);
- for the one attribution engine (:mod:`kn_lens.attribution`): the clean pass and what it keeps
  (:meth:`Family.clean_pass`), the forward resumed from layer ``l`` with scaled rows
  (:meth:`Family.scaled_run`), the full forward's logits where the answer is read
  (:meth:`Family.segment_logits`) and the answer's log-probability there
  (:meth:`Family.answer_logprob`).

``Family`` is generic in the model class and the batch class, so a runtime type checker
(beartype, as the tests run) sees the real types where the families meet the engine.

This module imports no family (so the families import it, and :mod:`.family` imports them: no
cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens.data.facts import BagCheck, FactBag
from kn_lens.neuron import Hook

__all__ = [
    "BagCheck",
    "Batch",
    "ChunkRun",
    "CleanPass",
    "Family",
    "ModelT",
    "BatchT",
]


@runtime_checkable
class Batch(Protocol):
    """A family's encoded prompts: rows, the read position of each, optionally the answers."""

    def __len__(self) -> int: ...

    @property
    def read_pos(self) -> Int[Tensor, " prompt"]: ...

    @property
    def first_answer_ids(self) -> Int[Tensor, " prompt"]: ...

    @property
    def tokens(self) -> Int[Tensor, "prompt pos"]: ...


@runtime_checkable
class CleanPass(Protocol):
    """What a family's clean pass keeps: at least the clean activations at the read position of
    the scored layers (``acts``, ``[prompt, layer, d_mlp]``)."""

    @property
    def acts(self) -> Float[Tensor, "prompt layer d_mlp"]: ...


@runtime_checkable
class ChunkRun(Protocol):
    """One chunk of scaled rows, run bottom-up by the engine.

    The chunk's rows are sorted by the layer they scale; the engine calls :meth:`step` once for
    every block ``j`` from the lowest scaled layer to the last, with ``join`` the slice of rows
    scaled at layer ``j`` (``None`` when none are), then :meth:`logits` on the result. ``step``
    runs block ``j`` on the rows already joined and adds the joining rows, whose
    ``hook_post`` at the read position of layer ``j`` is their slice of the chunk's leaf.
    """

    def step(self, j: int, resid: Tensor | None, join: slice | None) -> Tensor | None: ...

    def logits(self, resid: Tensor) -> Float[Tensor, "row seg d_vocab"]: ...


ModelT = TypeVar("ModelT", contravariant=True)
BatchT = TypeVar("BatchT")

#: ``start(rows, sel, leaf) -> ChunkRun``: a chunk of scaled rows (``rows`` index the batch's
#: prompts, ``sel`` the scored layers, ``leaf`` ``[row, d_mlp]`` the scaled activations).
StartChunk = Callable[[Tensor, Tensor, Tensor], ChunkRun]


@runtime_checkable
class Family(Protocol, Generic[ModelT, BatchT]):
    """What differs between model families (see the module docstring)."""

    name: str

    def usable_bags(self, model: ModelT, bags: Sequence[FactBag]) -> BagCheck: ...

    def model_prompt(self, prompt: str) -> str | None: ...

    def encode(
        self,
        model: ModelT,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> BatchT: ...

    def forward(self, model: ModelT, batch: BatchT) -> None: ...

    def readout(
        self, model: ModelT, batch: BatchT, *, fwd_hooks: Sequence[Hook] = ()
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]: ...

    def first_token(self, model: ModelT, answer: str | int) -> int: ...

    def answer_direction(self, model: ModelT, token: int) -> Float[Tensor, " d_model"]: ...

    # --- attribution ---------------------------------------------------------------------------

    def attribution_batch(
        self, model: ModelT, prompts: Sequence[Any], answers: Sequence[Any]
    ) -> BatchT: ...

    def select(self, batch: BatchT, idx: Sequence[int]) -> BatchT: ...

    def clean_pass(
        self, model: ModelT, batch: BatchT, layers: list[int], keep_resid: bool
    ) -> CleanPass: ...

    def scaled_run(
        self, model: ModelT, batch: BatchT, clean: Any, layers: list[int]
    ) -> AbstractContextManager[StartChunk]: ...

    def segment_logits(
        self, model: ModelT, batch: BatchT
    ) -> Float[Tensor, "prompt seg d_vocab"]: ...

    def answer_logprob(
        self, logits: Float[Tensor, "row seg d_vocab"], batch: BatchT, rows: Int[Tensor, " row"]
    ) -> Float[Tensor, " row"]: ...

    def device(self, model: ModelT) -> torch.device: ...
