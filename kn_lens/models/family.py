"""The model-family interface: the few things that differ between encoders and decoders.

Every analysis, CLI step and report works on either family through :func:`family_of`; none of
them branches on the family. A family says:

- which facts it can use and how a fact's prompts look to it (:meth:`Family.usable_bags`,
  :meth:`Family.model_prompt`): an encoder reads masked prompts, a decoder the text before the
  answer;
- how prompts and answers become model input, and where the fact is read
  (:meth:`Family.encode`; the batch's ``read_pos``: the ``[MASK]``, or the last prompt position);
- the answer's probability and the prediction at the read position (:meth:`Family.readout`);
- the token an answer starts with (:meth:`Family.first_token`) and the direction an update writes
  for it (:meth:`Family.answer_direction`).

Attribution's partial forward is each family's own (``kn_lens.attribution`` for encoders,
:func:`kn_lens.models.decoder.decoder_attribute` for decoders), chosen in
:func:`kn_lens.attribution.attribute`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedEncoder, HookedTransformer

from kn_lens.data.facts import FactBag
from kn_lens.neuron import Hook

log = logging.getLogger(__name__)

#: A model of either family.
Model = HookedEncoder | HookedTransformer


@dataclass
class BagCheck:
    """Which fact bags a model can use.

    Attributes:
        kept: the usable bags, as the model reads them (decoder bags hold decoder prompts).
        skipped: the unusable bags, each with the reason.
        dropped_prompts: per relation, prompts dropped from kept bags (a decoder drops the
            templates whose answer comes before the subject).
    """

    kept: list[FactBag]
    skipped: list[tuple[FactBag, str]] = field(default_factory=list)
    dropped_prompts: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def log(
        self, n_total: int | None = None, *, logger: logging.Logger | None = None, limit: int = 20
    ) -> None:
        """Name the skipped facts and count the dropped prompts per relation, at INFO."""
        out = logger or log
        if self.n_skipped:
            of = f" of {n_total}" if n_total is not None else ""
            out.info("skipped %d%s facts the model cannot use", self.n_skipped, of)
            for bag, reason in self.skipped[:limit]:
                out.info("  skipped %s (%s -> %s): %s", bag.key, bag.subject, bag.object, reason)
            if self.n_skipped > limit:
                out.info("  ... and %d more not listed", self.n_skipped - limit)
        for rel, n in sorted(self.dropped_prompts.items()):
            if n:
                out.info("  %s: %d prompt(s) dropped (the answer comes before the subject)", rel, n)


@runtime_checkable
class EncodedBatch(Protocol):
    """A family's encoded prompts: rows, the read position of each, optionally the answers."""

    def __len__(self) -> int: ...

    @property
    def read_pos(self) -> Int[Tensor, " prompt"]: ...

    @property
    def first_answer_ids(self) -> Int[Tensor, " prompt"]: ...

    def select(self, idx: Sequence[int]) -> Any: ...

    def to(self, device: Any) -> Any: ...


@runtime_checkable
class Family(Protocol):
    """What differs between model families (see the module docstring)."""

    name: str

    def usable_bags(self, model: Any, bags: Sequence[FactBag]) -> BagCheck: ...

    def model_prompt(self, prompt: str) -> str | None: ...

    def encode(
        self,
        model: Any,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> Any: ...

    def forward(self, model: Any, batch: Any) -> None: ...

    def readout(
        self, model: Any, batch: Any, *, fwd_hooks: Sequence[Hook] = ()
    ) -> tuple[Float[Tensor, "prompt d_vocab"], Float[Tensor, " prompt"] | None]: ...

    def first_token(self, model: Any, answer: str | int) -> int: ...

    def answer_direction(self, model: Any, token: int) -> Float[Tensor, " d_model"]: ...


def family_of(model: HookedEncoder | HookedTransformer) -> Family:
    """The family of ``model``: :class:`kn_lens.models.encoder.EncoderFamily` for a
    ``HookedEncoder``, :class:`kn_lens.models.decoder.DecoderFamily` for a ``HookedTransformer``."""
    from kn_lens.models.decoder import DecoderFamily
    from kn_lens.models.encoder import EncoderFamily

    if isinstance(model, HookedTransformer):
        return DecoderFamily()
    if isinstance(model, HookedEncoder):
        return EncoderFamily()
    raise TypeError(
        f"expected a HookedEncoder or HookedTransformer (kn_lens.load_model), not "
        f"{type(model).__name__}"
    )
