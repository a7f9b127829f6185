"""The decoder family on a ``TransformerBridge``: GPT-2, GPT-NeoX/Pythia and Llama/SmolLM2.

Prompts, answers, teacher forcing, the read-out and the update direction are
:class:`~kn_lens.models.decoder.DecoderFamily`'s: they call the model as TransformerLens models
are called (``model(tokens, attention_mask=...)``, ``run_with_hooks``, ``hooks``, ``to_tokens``,
``W_U``), which the bridge answers too; it derives position ids from the attention mask, so left
padding gives the positions TransformerLens 3 gives. Prompts are padded with the tokenizer's pad
token under an explicit attention mask, so a GPT-2 tokenizer whose pad token is also its BOS and
EOS token changes nothing.

Attribution resumes the forward as :mod:`.replay` describes. In these architectures the MLP's
output is added to the residual stream (after attention, or beside it in GPT-NeoX's parallel
blocks), so a row scaled at layer ``l`` has the clean block output there with
``W_out post + b_out`` exchanged at the read position; blocks ``l + 1 ..`` run on every position
(TransformerLens 3's key/value cache for the prefix has no bridge counterpart that kn_lens uses).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from jaxtyping import Float
from torch import Tensor

from kn_lens.models.backend import TransformerBridge
from kn_lens.models.bridge.replay import BridgeClean, clean_pass, scaled_run
from kn_lens.models.decoder.batch import EncodedDecoderPrompts
from kn_lens.models.decoder.family import DecoderFamily
from kn_lens.models.protocol import StartChunk

__all__ = ["BridgeDecoderFamily"]


def _head(model: TransformerBridge, resid: Tensor) -> Tensor:
    """The final norm and the unembedding (the bridge's ``ln_final`` and ``unembed``)."""
    return model.unembed(model.ln_final(resid))


class BridgeDecoderFamily(DecoderFamily):
    """Causal LMs on a ``TransformerBridge`` (raw weights)."""

    def clean_pass(  # type: ignore[override]
        self,
        model: TransformerBridge,
        batch: EncodedDecoderPrompts,
        layers: list[int],
        keep_resid: bool,
    ) -> BridgeClean:
        """The clean pass over the prompts and fed answer tokens, keeping each scored layer's
        clean MLP output (``W_out post + b_out``) at the read position."""
        b = batch.to(model.cfg.device)

        def run() -> None:
            model(b.tokens, attention_mask=b.attention_mask, use_cache=False, return_type=None)

        keep = {"mlp_out": "mlp.out.hook_out"}
        return clean_pass(model, len(b), b.read_pos, layers, keep_resid, run, keep)

    def scaled_run(  # type: ignore[override]
        self,
        model: TransformerBridge,
        batch: EncodedDecoderPrompts,
        clean: BridgeClean,
        layers: list[int],
    ) -> AbstractContextManager[StartChunk]:
        """:func:`kn_lens.models.bridge.replay.scaled_run`: a row scaled at layer ``j`` has the
        clean block output with the MLP output at the read position exchanged."""
        b = batch.to(model.cfg.device)
        mlp_out = clean.extra["mlp_out"]
        block_out = clean.calls.out
        seg = b.prompt_width - 1

        def join_at(j: int, rows: Tensor, post: Tensor) -> Tensor:
            scaled = model.blocks[j].mlp.out(post)[:, 0]
            return block_out[j][rows, seg] - mlp_out[j][rows] + scaled

        def logits(resid: Tensor, rows: Tensor) -> Tensor:
            return _head(model, resid[:, seg:])

        return scaled_run(model, clean, b.read_pos, layers, join_at, logits)

    def segment_logits(  # type: ignore[override]
        self, model: TransformerBridge, batch: EncodedDecoderPrompts
    ) -> Float[Tensor, "prompt seg d_vocab"]:
        """Logits at the read position and the fed answer positions, from one full forward."""
        b = batch.to(model.cfg.device)
        logits = model(b.tokens, attention_mask=b.attention_mask, use_cache=False)
        return logits[:, b.prompt_width - 1 :]
