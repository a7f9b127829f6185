"""Model families: how kn_lens loads and reads encoders (BERT masked LMs) and decoders (causal LMs).

``decoder_loading`` turns GPT-2, GPT-NeoX/Pythia and Llama-family checkpoints (Hugging Face folders,
cached TransformerLens names, ``.gguf`` files, the installed SmolLM2) into TransformerLens
``HookedTransformer`` models.
"""
