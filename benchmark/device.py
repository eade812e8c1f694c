"""Choosing the device, and how training uses it.

``auto`` takes CUDA where there is one and the CPU elsewhere. :class:`Runtime` holds the per-process speed
settings of the training loop (bf16 autocast, channels-last, ``torch.compile``). It is set once by the CLI and
read by :func:`benchmark.training.train`, rather than passed through every defense, so a plugin defense that
calls ``train`` gets the same treatment as the built-ins. On the CPU every setting is a no-op by default: the
CPU path and its numerics (bitwise-repeatable runs) stay exactly as they are.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Literal

import torch
from torch import nn

from benchmark.errors import UserError

Precision = Literal["auto", "fp32", "bf16"]


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache  # one process never changes CPU; rows ask once per cell
def cpu_kind() -> str:
    """The CPU as far as bitwise repeatability goes: its model and the vector instruction set torch's kernels
    dispatch to, e.g. ``AMD EPYC (AVX2)``. Another instruction set rounds some kernels' sums differently, and a
    training run carries such last-bit differences into different weights, so one cell is only bitwise
    repeatable on the same kind (and thread count); ``verify`` compares within a tolerance elsewhere."""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


@dataclass(frozen=True)
class Runtime:
    """How the training loop runs on its device.

    - ``precision``: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere; ``bf16`` forces autocast (also on the
      CPU, where it is slower); ``fp32`` turns it off. bf16 needs no gradient scaler. (The CleanCLIP code runs the
      forward pass in fp32 and only the loss under fp16 autocast with a GradScaler, reference §3.)
    - ``channels_last``: on CUDA, convolutional models (RN50) and their image batches use the channels-last
      memory format, which cuDNN runs faster under autocast; ViTs only have one patch convolution and are left
      alone. Never on the CPU.
    - ``compile``: ``torch.compile`` the model for training (pays a compile time up front).
    """

    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision {self.precision!r} is not understood; choose auto, fp32 or bf16")

    def autocast(self, device: torch.device) -> ContextManager:
        """The autocast context of one training step on ``device`` (a null context when fp32)."""
        bf16 = self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def channels_last(self, model: nn.Module, device: torch.device) -> bool:
        """Whether ``model`` should train in channels-last format on ``device``."""
        if device.type != "cuda":
            return False
        convolutions = sum(isinstance(module, nn.Conv2d) for module in model.modules())
        return convolutions > 1


_runtime = Runtime()


def current_runtime() -> Runtime:
    """The runtime settings of this process (defaults unless :func:`set_runtime` was called)."""
    return _runtime


def set_runtime(runtime: Runtime) -> None:
    """Set this process's runtime settings (the CLI does, from ``--precision`` and ``--compile``)."""
    global _runtime
    _runtime = runtime
