"""Choosing the device: ``auto`` takes CUDA where there is one and the CPU elsewhere."""

from __future__ import annotations

import torch

from benchmark.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {name!r} is not understood; choose auto, cpu, cuda or cuda:N")
