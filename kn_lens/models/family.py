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

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedEncoder, HookedTransformer

from kn_lens.data.facts import BagCheck, FactBag
from kn_lens.neuron import Hook

__all__ = ["BagCheck", "EncodedBatch", "Family", "Model", "family_of"]

#: A model of either family.
Model = HookedEncoder | HookedTransformer


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
