"""kn_lens: knowledge neurons in BERT masked language models, on TransformerLens.

Reproduces Dai et al., "Knowledge Neurons in Pretrained Transformers" (ACL 2022).
"""

from kn_lens import data
from kn_lens.config import PaperConfig
from kn_lens.model import load_model
from kn_lens.neuron import Neuron

__version__ = "0.1.0"

__all__ = ["data", "load_model", "Neuron", "PaperConfig", "__version__"]
