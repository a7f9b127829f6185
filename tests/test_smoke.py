import torch

from kn_lens.prompts import encode, mask_logits


def test_tiny_model_loads(tiny_model):
    enc = encode(tiny_model, ["the city of [MASK] ."])
    assert enc.tokens.shape[0] == 1
    logits = mask_logits(tiny_model, enc)
    assert logits.shape == (1, tiny_model.cfg.d_vocab)
    assert torch.isfinite(logits).all()
