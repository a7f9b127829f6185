"""The :class:`Neuron` record: one feed-forward neuron, named the TransformerLens way."""

from __future__ import annotations

from typing import NamedTuple


class Neuron(NamedTuple):
    """Neuron ``index`` of layer ``layer``.

    Its activation is ``blocks.{layer}.mlp.hook_post[..., index]`` and its value vector is the row
    ``blocks[layer].mlp.W_out[index]`` (shape ``[d_model]``).
    """

    layer: int
    index: int

    def __str__(self) -> str:  # "L3.N512"
        return f"L{self.layer}.N{self.index}"
