"""kn_lens: knowledge neurons in BERT masked language models, on TransformerLens.

Reproduces Dai et al., "Knowledge Neurons in Pretrained Transformers" (ACL 2022)::

    import kn_lens
    model = kn_lens.load_model("default")              # a HookedEncoder, tokenizer attached
    bag = kn_lens.data.default_facts()[0]               # one fact, its paraphrase prompts
    scores = kn_lens.attribute(model, bag.prompts, bag.object)   # [prompt, layer, d_mlp]
    neurons = kn_lens.find_knowledge_neurons(model, bag)         # [Neuron(layer, index), ...]
"""

from kn_lens import data
from kn_lens.attribution import attribute
from kn_lens.config import PaperConfig
from kn_lens.model import load_model
from kn_lens.neuron import Neuron
from kn_lens.knowledge_neurons import find_knowledge_neurons

__version__ = "0.1.0"

__all__ = ["attribute", "data", "find_knowledge_neurons", "load_model", "Neuron", "PaperConfig",
           "__version__"]
