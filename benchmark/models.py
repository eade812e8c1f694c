"""Victim models through open_clip: create (random init, open_clip pretrained tag, or a local weights file).

cleanbench ships its tiny architectures as open_clip JSON configs (``benchmark/model_configs``) registered with
``open_clip.add_model_config``, so any open_clip architecture name works the same way.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from benchmark.checkpoints import load_weights, looks_like_path
from benchmark.errors import UserError, did_you_mean
from benchmark.text_context import encode_captions_by_length

if TYPE_CHECKING:
    from benchmark.presets import ModelSpec

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_model(name: str, *, pretrained: str = "", allow_torchscript: bool = False, seed: int = 0) -> nn.Module:
    """A CLIP model of architecture ``name``: random init from ``seed``, or the weights ``pretrained`` names.

    ``pretrained`` is an open_clip pretrained tag (e.g. ``openai``, ``laion2b_s34b_b79k``; downloaded by open_clip
    on first use) or a local weights file (see :mod:`benchmark.checkpoints` for the formats, and why TorchScript
    needs ``allow_torchscript``). Captions are encoded over their own length (:mod:`benchmark.text_context`).
    """
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        hint = did_you_mean(name, open_clip.list_models(), cutoff=0.6)
        raise UserError(f"Unknown model '{name}'.{hint} Run `python -c 'import open_clip; print(open_clip.list_models())'` for all.")
    torch.manual_seed(seed)
    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip warns "No pretrained weights" at random init
    if pretrained and not looks_like_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UserError(f"model.pretrained = {pretrained!r} is neither a file nor a pretrained tag of {name}; "
                            f"tags: {', '.join(tags) or 'none'}")
        return encode_captions_by_length(open_clip.create_model(name, pretrained=pretrained, output_dict=True))
    model = open_clip.create_model(name, output_dict=True)
    if pretrained:
        load_weights(model, pretrained, allow_torchscript=allow_torchscript)
    return encode_captions_by_length(model)


def model_config(name: str) -> dict | None:
    """open_clip's config of architecture ``name`` (cleanbench's own included), or None if there is none."""
    import open_clip

    _register_configs()
    return open_clip.get_model_config(name)


def model_from_spec(spec: "ModelSpec", seed: int = 0) -> nn.Module:
    """The victim's starting model for a preset's ``[model]`` section."""
    return create_model(spec.name, pretrained=spec.pretrained, allow_torchscript=spec.allow_torchscript, seed=seed)


@functools.lru_cache(maxsize=4)
def tokenizer_for(name: str):
    """open_clip's tokenizer for architecture ``name`` (context length from its config); built once per process,
    since every victim and every grid cell asks for it and building it reads the BPE vocabulary."""
    import open_clip

    _register_configs()
    return open_clip.get_tokenizer(name)
