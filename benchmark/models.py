"""Victim models through open_clip: create (random init, open_clip pretrained tag, or local checkpoint), save, load.

cleanbench ships its tiny architectures as open_clip JSON configs (``benchmark/model_configs``) registered with
``open_clip.add_model_config``, so any open_clip architecture name works the same way.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import UserError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_model(name: str, *, checkpoint: str = "", seed: int = 0) -> nn.Module:
    """A CLIP model of architecture ``name``: random init from ``seed``, or weights from ``checkpoint``.

    ``checkpoint`` is a local ``.safetensors`` file or a ``.pt``/``.bin`` state dict (loaded with
    ``weights_only=True``: a pickle that would run code is refused).
    """
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"Unknown model '{name}'.{hint} Run `python -c 'import open_clip; print(open_clip.list_models())'` for all.")
    torch.manual_seed(seed)
    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip warns "No pretrained weights" at random init
    model = open_clip.create_model(name, output_dict=True)
    if checkpoint:
        model.load_state_dict(load_state_dict(checkpoint))
    return model


@functools.lru_cache(maxsize=4)
def tokenizer_for(name: str):
    """open_clip's tokenizer for architecture ``name`` (context length from its config); built once per process,
    since every victim and every grid cell asks for it and building it reads the BPE vocabulary."""
    import open_clip

    _register_configs()
    return open_clip.get_tokenizer(name)


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write ``model``'s weights as safetensors, atomically (temporary file, fsync, rename)."""
    from safetensors.torch import save_file

    from benchmark.storage import atomic_path

    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file or a plain/open_clip-style ``.pt`` state dict, never executing pickles."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError and others for refused pickles
        raise UserError(f"refused to load {path}: it is not a plain tensor checkpoint ({type(error).__name__}); "
                        "convert it to safetensors") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {key.removeprefix("module."): value for key, value in state.items()}
