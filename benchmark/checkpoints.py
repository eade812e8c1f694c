"""Reading and writing model weights without ever running an untrusted pickle.

Formats read:
- ``.safetensors`` (what cleanbench writes; plain tensors, nothing executable);
- ``.pt``/``.bin``/``.pth`` state dicts, plain or as open_clip's training script saves them
  (``{"epoch", "name", "state_dict" with "module." prefixes, "optimizer"}``, also the CleanCLIP code's format),
  read with ``torch.load(weights_only=True)``: a pickle that would build arbitrary objects is refused;
- OpenAI's original TorchScript archives (``RN50.pt``, ...), only when the preset sets ``allow_torchscript``:
  loading one runs the TorchScript program inside it, so it must be a file the user trusts.

Loading into a model goes through ``open_clip.load_checkpoint``, so open_clip's own conversions (``module.``
prefixes, TorchScript state dicts, old text-tower layouts, position-embedding resizing) apply unchanged. What
cleanbench writes is a plain state dict that ``open_clip.create_model(name, pretrained=path)`` loads as is.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from benchmark.errors import UserError

CheckpointKind = Literal["safetensors", "torchscript", "pickle"]
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def looks_like_path(value: str) -> bool:
    """Whether a ``pretrained`` value names a file rather than an open_clip tag (tags have no slash or suffix)."""
    return "/" in value or "\\" in value or value.endswith(WEIGHT_SUFFIXES) or Path(value).expanduser().is_file()


def checkpoint_kind(path: Path) -> CheckpointKind:
    """The format of a weights file, judged from its content (a TorchScript archive holds ``constants.pkl``)."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist()):
                return "torchscript"
    return "pickle"


def load_weights(model: nn.Module, path: str | Path, *, allow_torchscript: bool = False) -> None:
    """Load the weights file ``path`` into ``model`` (strict: every key must fit the architecture)."""
    import open_clip

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    kind = checkpoint_kind(path)
    if kind == "torchscript" and not allow_torchscript:
        raise UserError(f"{path} is a TorchScript archive (OpenAI's original CLIP format): loading it runs the program "
                        "it contains, so cleanbench refuses it by default. If you trust where it came from, set "
                        "allow_torchscript = true in the preset's [model] section, or convert it to safetensors")
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=kind != "torchscript")
    except pickle.UnpicklingError as error:
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain containers, which "
                        f"only an unsafe pickle load could build ({str(error).splitlines()[-1][:160]}); "
                        "convert it to safetensors") from None
    except RuntimeError as error:  # a state dict for another architecture
        first = str(error).strip().splitlines()
        raise UserError(f"{path} does not fit the model architecture: {' '.join(first[:2])[:300]}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a cleanbench checkpoint (safetensors), e.g. a cached victim."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return load_file(str(path))


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write ``model``'s weights as safetensors, atomically (temporary file, fsync, rename).

    The keys are the model's own (no ``module.`` prefix, even for a DistributedDataParallel-wrapped model), so
    ``open_clip.create_model(name, pretrained=path)`` loads the file as is.
    """
    from safetensors.torch import save_file

    from benchmark.storage import atomic_path

    model = getattr(model, "module", model)
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
