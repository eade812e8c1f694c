"""Captions are encoded over their own length: the same features and gradients as open_clip's full-context
encoder, only for models where that holds (a causal text tower pooled at the end-of-text token)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from benchmark.models import create_model, tokenizer_for
from benchmark.text_context import CaptionLengthCLIP, encode_captions_by_length

MODEL = "cleanbench-vit-tiny"
CAPTIONS = ["a bag.", "a black and white photo of a pair of trousers on a plain background, seen from the left.",
            "there is a ankle boot in this picture."]


def test_features_and_gradients_match_open_clip_full_context():
    model = create_model(MODEL, seed=0)
    assert type(model) is CaptionLengthCLIP
    tokens = tokenizer_for(MODEL)(CAPTIONS)
    assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]  # the batch is shorter than the context

    trimmed = model.encode_text(tokens, normalize=True)
    trimmed.sum().backward()
    trimmed_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    full = open_clip.CLIP.encode_text(model, tokens, normalize=True)
    full.sum().backward()

    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(trimmed_grads[name], param.grad, rtol=1e-4, atol=1e-4, msg=name)  # float rounding only
    assert set(trimmed_grads) == {name for name, p in model.named_parameters() if p.grad is not None}


def test_a_batch_that_fills_the_context_takes_open_clip_path():
    model = create_model(MODEL, seed=0)
    tokens = tokenizer_for(MODEL)([" ".join(["word"] * 60)])  # truncated to the context: no padding at all
    assert torch.equal(model.encode_text(tokens), open_clip.CLIP.encode_text(model, tokens))


@pytest.mark.parametrize("pool_type", ["last", "first"])
def test_text_towers_pooled_elsewhere_keep_open_clip_encoder(pool_type):
    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=8),
                           text_cfg=dict(context_length=16, vocab_size=1000, width=32, heads=2, layers=1,
                                         pool_type=pool_type))
    assert type(encode_captions_by_length(model)) is open_clip.CLIP


def test_state_dict_is_open_clips():
    model = create_model(MODEL, seed=0)
    plain = open_clip.create_model(MODEL)
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict())  # strict: every key and shape matches
