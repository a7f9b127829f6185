"""kn_lens: knowledge neurons in transformer language models, encoders (BERT masked language
models) and decoders (GPT-style causal models such as SmolLM2), on TransformerLens.

Reproduces Dai et al., "Knowledge Neurons in Pretrained Transformers" (ACL 2022)::

    import kn_lens
    model = kn_lens.load_model("default")              # a HookedEncoder, tokenizer attached
    bag = kn_lens.data.default_facts()[0]               # one fact, its paraphrase prompts
    scores = kn_lens.attribute(model, bag.prompts, bag.object)   # [prompt, layer, d_mlp]
    neurons = kn_lens.find_knowledge_neurons(model, bag, scores=scores)  # [Neuron(layer, index)]

``find_knowledge_neurons(model, bag)`` without ``scores=`` attributes the bag itself. A decoder
(``load_model("smollm2-135m")``, a Hugging Face decoder folder or a ``.gguf`` file) is a
``HookedTransformer``; the same calls work on it.

Layers, top to bottom; every import points down (see ARCHITECTURE.md)::

    cli/                        argument parsing (no torch); calls the pipeline
    pipeline/                   facts -> attribution (resumable) -> neurons -> analyses -> report
    report, plots               rendering only, from results.json
    rundir, store, executors    the --out folder's files and fingerprints; resumable JSON lines;
                                local / Ray
    experiments/                one module per analysis, each exporting its registry entry
                                (experiments.ANALYSES collects them)
    attribution/, knowledge_neurons, bag_scores, interventions, weights
                                ONE attribution engine (IG, grad x act, activation; baselines,
                                objectives, contrasts); neurons; hooks; W_out row edits
    prompts, models/            prompts as model input, answers read out; model families as
                                plug-ins (models/encoder/, models/decoder/, models/protocol)
                                and loading
    data/, neuron, config, errors, results
                                facts (no torch); the Neuron and its validator; the paper's
                                hyperparameters and the compute settings; KnLensError; results
                                as plain data

Beside the stack: ``training`` (``python -m kn_lens.training``), ``training_data`` and
``wordpiece`` (its vocabulary) train the default model on ``data/world``; they import only
``data/``, and only tests import them.

The public names below are imported on first use, so ``import kn_lens`` (and the ``kn-lens``
command's argument parsing) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kn_lens import data
from kn_lens.config import PaperConfig
from kn_lens.errors import KnLensError
from kn_lens.neuron import Neuron

if TYPE_CHECKING:  # pragma: no cover
    from kn_lens.attribution import attribute
    from kn_lens.knowledge_neurons import find_knowledge_neurons
    from kn_lens.models import load_model

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Static imports on first use: tools still see the dependencies, and torch loads only when
    # a name that needs it is used.
    if name == "attribute":
        from kn_lens.attribution import attribute

        return attribute
    if name == "find_knowledge_neurons":
        from kn_lens.knowledge_neurons import find_knowledge_neurons

        return find_knowledge_neurons
    if name == "load_model":
        from kn_lens.models import load_model

        return load_model
    raise AttributeError(f"module 'kn_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names are not globals until first use; list them anyway (tab completion, help()).
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "attribute",
    "data",
    "find_knowledge_neurons",
    "KnLensError",
    "load_model",
    "Neuron",
    "PaperConfig",
    "__version__",
]
