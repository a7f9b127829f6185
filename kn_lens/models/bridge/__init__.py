"""The TransformerBridge backend: both families on TransformerLens' ``TransformerBridge``.

- :mod:`.loading`: any supported checkpoint booted as a bridge with raw weights;
- :mod:`.replay`: attribution's clean pass and resumed forward, by recording and replaying the
  Hugging Face blocks' calls;
- :mod:`.encoder`, :mod:`.decoder`: the families' bridge versions (what runs the model differs;
  prompts, answers and read positions are the families' own).
"""
