"""The encoder family on a ``TransformerBridge``: BERT masked LMs (``BertForMaskedLM``).

Everything but attribution's forward pieces is :class:`~kn_lens.models.encoder.EncoderFamily`'s
(masked prompts, one-token answers, the update direction ``W_E[token]``, and the read-out, which
:func:`kn_lens.prompts.encoder_output` and :func:`kn_lens.prompts.logits_at_mask` run on either
backend: on the bridge, ``encoder_output`` and ``mlm_head`` mean something else, so the body is the
Hugging Face encoder, whose layers are the bridge's blocks, and the head ``original_model.cls``).

Attribution resumes the forward as :mod:`.replay` describes; a row scaled at layer ``l``
recomputes the second half of BERT's layer ``l`` at ``[MASK]``
(``LayerNorm(W_out post + b_out + attention output)``, Hugging Face's ``BertOutput``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor

from kn_lens.models.backend import TransformerBridge
from kn_lens.models.bridge.replay import BridgeClean, clean_pass, scaled_run
from kn_lens.models.encoder.family import EncoderFamily
from kn_lens.models.protocol import StartChunk
from kn_lens.prompts import EncodedPrompts, encoder_output, logits_at_mask

__all__ = ["BridgeEncoderFamily"]


class BridgeEncoderFamily(EncoderFamily):
    """BERT masked LMs on a ``TransformerBridge`` (raw weights)."""

    def clean_pass(  # type: ignore[override]
        self, model: TransformerBridge, batch: EncodedPrompts, layers: list[int], keep_resid: bool
    ) -> BridgeClean:
        """The clean pass (:func:`kn_lens.models.bridge.replay.clean_pass`), keeping each scored
        layer's attention output at ``[MASK]`` (the MLP's input)."""
        b = batch.to(str(model.cfg.device))

        def run() -> None:
            encoder_output(model, b)

        keep = {"attn_out": "mlp.in.hook_in"}
        return clean_pass(model, len(b), b.mask_pos, layers, keep_resid, run, keep)

    def scaled_run(  # type: ignore[override]
        self,
        model: TransformerBridge,
        batch: EncodedPrompts,
        clean: BridgeClean,
        layers: list[int],
    ) -> AbstractContextManager[StartChunk]:
        """:func:`kn_lens.models.bridge.replay.scaled_run`; a row scaled at layer ``j`` runs
        Hugging Face's ``BertOutput`` of that layer at ``[MASK]``."""
        b = batch.to(str(model.cfg.device))
        attn_out = clean.extra["attn_out"]

        def join_at(j: int, rows: Tensor, post: Tensor) -> Tensor:
            layer: Any = model.blocks[j].original_component
            return layer.output(post, attn_out[j][rows][:, None])[:, 0]

        def logits(resid: Tensor, rows: Tensor) -> Tensor:
            return logits_at_mask(model, resid, b.mask_pos[rows])[:, None]

        return scaled_run(model, clean, b.mask_pos, layers, join_at, logits)
