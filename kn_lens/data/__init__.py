"""Facts, as plain records: no torch, no model.

- :mod:`kn_lens.data.facts` -- :class:`Fact`, :class:`FactBag`, templates, a user's JSON-lines
facts;
- :mod:`kn_lens.data.pararel` -- the paper's PARAREL patterns over LAMA T-REx facts;
- :mod:`kn_lens.data.world` -- the built-in fact world of the default model;
- :mod:`kn_lens.data.web` -- web sentences and the T1/T2/T3 prompts built from them.
"""

from kn_lens.data.facts import (
    MASK,
    RELATION_TYPES,
    DataError,
    Fact,
    FactBag,
    check_prompt,
    fill_template,
    load_jsonl_facts,
    prefix_prompt,
    relation_of_key,
    sample_bags,
)
from kn_lens.data.pararel import load_pararel, load_patterns, load_relations
from kn_lens.data.world import default_facts

__all__ = [
    "MASK",
    "RELATION_TYPES",
    "DataError",
    "Fact",
    "FactBag",
    "check_prompt",
    "default_facts",
    "fill_template",
    "load_jsonl_facts",
    "load_pararel",
    "load_patterns",
    "load_relations",
    "prefix_prompt",
    "relation_of_key",
    "sample_bags",
]
