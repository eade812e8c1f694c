"""Encode captions over their own length, not over the text tower's whole context.

open_clip's ``CLIP.encode_text`` runs every caption through all ``context_length`` positions (77 for the
paper's models, 32 for the tiny default), padding included. Its text transformer is causal and pools the
end-of-text position, which holds the highest token id (``text_pool_type = "argmax"``), so no position after
the batch's last end-of-text token can change any feature: cutting the token batch there gives the same
features (up to the float rounding of smaller matrix products) for a fraction of the work. The default's
captions are 7 to 14 tokens long (start and end tokens included) in a context of 32, so a batch runs through
at most 14 positions: over half of the text tower's work is gone, 10–15% of a training step here.

Models whose text tower is not causal or pools some other way (``CustomTextCLIP``, ``pool_type = "last"``)
keep open_clip's method: there, later positions do matter.

Where the cut is worked out matters on a GPU: reading the batch's length off token ids already on the device
is a device-to-host sync on every step (and a graph break under ``torch.compile``). The training batches
(:mod:`benchmark.data.batches`) therefore cut their token ids on the CPU, before the copy to the device
(:func:`cut_tokens`), and ``encode_text`` takes a batch narrower than the context as already cut: its width is
its length, read from the shape, with no sync. A batch of the full context width (the zero-shot classifier's
templates, a plugin's own batches) is cut as before, from its ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip import CLIP
from open_clip.transformer import text_global_pool
from torch import nn


class CaptionLengthCLIP(CLIP):
    """open_clip's CLIP whose ``encode_text`` stops at the batch's last end-of-text token.

    The parameters, state dict and every other method are CLIP's own: a checkpoint saved from this class loads
    in plain open_clip and back (``tests/test_checkpoints.py``).
    """

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        context = self.positional_embedding.shape[0]
        if text.shape[1] < context:  # cut already, on the CPU (cut_tokens): the width is the length, no sync
            length = text.shape[1]
        else:
            length = int(text.argmax(dim=-1).max()) + 1
            if length >= text.shape[1]:
                return super().encode_text(text, normalize=normalize)
        text = text[:, :length]
        # open_clip's CLIP.encode_text with the positional embedding and causal mask cut to ``length``.
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = text_global_pool(x, text, self.text_pool_type)
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def encode_captions_by_length(model: nn.Module) -> nn.Module:
    """Make ``model`` (in place) a :class:`CaptionLengthCLIP` when its text tower allows it; return it."""
    if (type(model) is CLIP and getattr(model, "text_pool_type", None) == "argmax"
            and isinstance(getattr(model, "attn_mask", None), torch.Tensor)):
        model.__class__ = CaptionLengthCLIP
    return model


def encodes_captions_by_length(model: nn.Module) -> bool:
    """Whether ``model`` takes token batches cut to their captions' length (:func:`cut_tokens`)."""
    return isinstance(model, CaptionLengthCLIP)


def cut_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """A batch of token ids (on the CPU) without the positions after its last end-of-text token, which holds the
    highest id: the cut :class:`CaptionLengthCLIP` makes, made before the batch goes to the device."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    return tokens[:, :length] if length < tokens.shape[1] else tokens
