"""Knowledge attribution: which MLP neurons carry a fact, scored where the fact is read.

For a prompt and its answer, Dai et al. (2022) score neuron ``i`` of layer ``l`` (the activation
``a_i`` read at ``blocks.{l}.mlp.hook_post``, at the ``[MASK]`` of an encoder prompt or the last
prompt position of a decoder prompt) by integrated gradients from a zero baseline,

    Attr(a_i) = a_i * (1/m) * sum_{k=0}^{m-1} d p(alpha_k * a) / d (alpha_k a_i),   alpha_k = k/m,

where ``p(w)`` is the model's probability of the answer when layer ``l``'s activation vector at the
read position is replaced by ``w`` and every other layer and position keeps its natural value.
:func:`attribute` computes this and the field's alternatives, for every model family, with one
engine (:mod:`.engine`):

- ``method``: ``"ig"`` (above), ``"grad_x_act"`` (attribution patching:
  ``(a_i - b_i) * dp(a)/da_i``), ``"activation"`` (the paper's baseline, ``a_i``);
- ``baseline``: ``"zero"``, ``"mean"`` (the mean activation over the prompts given; AMIG, Chen et
  al. 2024), or a ``[layer, d_mlp]`` tensor ``b``: IG from ``b`` is
  ``(a - b) * mean_k dp/da at b + alpha_k (a - b)``;
- ``objective``: ``"prob"`` (``p(answer)``, the paper's) or ``"logprob"`` (``log p(answer)``);
- ``contrast``: other answers; the objective becomes ``f(answer) - mean_j f(contrast_j)``.

Lower precision is opt-in (``dtype=torch.bfloat16`` / ``torch.float16``): the gradient passes run
under ``torch.autocast``; the clean pass, the alpha grid and the gradient sums stay in float32, so
the activations that multiply the gradient sums are exact. Autocast was chosen over a cast copy of
the model: on the default model it matched float32 more closely, at the same speed on the CPU, and
needs no second copy of the weights.
"""

from kn_lens.attribution.engine import attribute, attribute_facts
from kn_lens.attribution.options import (
    BASELINES,
    DTYPES,
    METHODS,
    OBJECTIVES,
    Method,
    Objective,
    resolve_dtype,
)

__all__ = [
    "BASELINES",
    "DTYPES",
    "METHODS",
    "OBJECTIVES",
    "Method",
    "Objective",
    "attribute",
    "attribute_facts",
    "resolve_dtype",
]
