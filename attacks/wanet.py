"""WaNet (Nguyen & Tran, "WaNet – Imperceptible Warping-based Backdoor Attack", ICLR 2021).

The trigger is a fixed warping field applied with ``grid_sample``. The field is built as in WaNet's code:
``ins = U(-1, 1)^(2, k, k)``, normalised to mean ``|ins| = 1``, upsampled bicubically to the image size and
added to the identity grid with strength ``s / image_size``; then clamped to [-1, 1] and multiplied by
``grid_rescale``. It is drawn once from the attack's seed, so poisoning and evaluation use the same field.
Two variants, chosen with ``variant``:

* ``"cleanclip"`` (default), the CleanCLIP paper's WaNet (reference §2.3): ``k`` = the image size and
  ``s = 1``, so the field is per-pixel independent jitter of about 0.5 px on average and at most about 1 px,
  and there is no noise mode.
* ``"original"``, WaNet as published: a smooth field from a ``k = 4`` control grid with ``s = 0.5``.
  ``noise_mode = true`` adds WaNet's "noise mode": ``cross_ratio`` × (poison count) further pairs, not
  poisoned, are warped with the backdoor field plus random per-pixel noise (a fresh ``U(-1, 1) / size`` per
  image, as WaNet's ``grid_temps + (rand*2-1)/input_height``) and keep their own captions, so the model must
  learn the exact field rather than "any warp". The manifest lists them under ``extra["noise_mode"]``. Noise mode
  needs the training pairs in memory (it changes pairs it did not select); a streamed split refuses it.

``k`` and ``s`` can be set explicitly for either variant (e.g. ``s = 0.6`` as in the attack-cleanclip fork).

Deviations, on purpose:

* The CleanCLIP code loads a grid committed to its repository (drawn without a seed); cleanbench draws a grid
  with the same recipe from the attack's seed, so the field differs from the committed one.
* WaNet applies the warp to a training batch on the fly (a fresh noise-mode grid every epoch); here poisoning
  happens once, before training, as in CleanCLIP's data-poisoning threat model.
* The grid is built at the preset's resolution instead of 224 px; for ``"cleanclip"`` ``k`` follows the image
  size, which keeps the per-pixel character of the paper's field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from attacks import ATTACKS
from attacks.base import Attack, PoisonManifest, PoisonTarget
from benchmark.config import check_range
from benchmark.data.pairs import PairSet, to_float, to_uint8
from benchmark.errors import UserError
from benchmark.seeding import derive_seed

VARIANT_DEFAULTS = {"cleanclip": (None, 1.0), "original": (4, 0.5)}  # (k, s); k None = the image size


@dataclass(frozen=True)
class WaNetConfig:
    variant: Literal["cleanclip", "original"] = "cleanclip"
    k: int | None = None  # control-grid size; None = the variant's (image size for cleanclip, 4 for original)
    s: float | None = None  # warp strength; None = the variant's (1.0 for cleanclip, 0.5 for original)
    grid_rescale: float = 1.0
    noise_mode: bool = False
    cross_ratio: float = 2.0  # noise-mode pairs per poisoned pair (WaNet's default)

    def __post_init__(self) -> None:
        if self.k is not None:
            check_range("k", self.k, 2, 4096)
        if self.s is not None:
            check_range("s", self.s, 0.0, 1000.0, low_inclusive=False)
        check_range("grid_rescale", self.grid_rescale, 0.0, 1.0, low_inclusive=False)
        check_range("cross_ratio", self.cross_ratio, 0.0, 100.0, low_inclusive=False)


@ATTACKS.register()
class WaNet(Attack):
    """A fixed warping field: per-pixel jitter (CleanCLIP) or a smooth k×k-controlled warp (original WaNet)."""

    name = "wanet"
    uses_clean_pairs = False
    version = "1"
    Config = WaNetConfig

    def setup(self) -> None:
        size = self.context.image_size
        default_k, default_s = VARIANT_DEFAULTS[self.config.variant]
        self.k = self.config.k or default_k or size
        self.s = self.config.s if self.config.s is not None else default_s
        if self.k > size:
            raise UserError(f"attacks.wanet.k = {self.k} is larger than the image size {size}; allowed: [2, {size}]")
        generator = torch.Generator().manual_seed(derive_seed(self.context.seed, "wanet-grid"))
        ins = torch.rand(1, 2, self.k, self.k, generator=generator) * 2 - 1
        ins = ins / ins.abs().mean()
        self.noise_grid = F.interpolate(ins, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size)
        x, y = torch.meshgrid(line, line, indexing="ij")
        self.identity_grid = torch.stack((y, x), 2)[None]
        self.grid = self._warp_grid(self.noise_grid)

    def _warp_grid(self, noise_grid: torch.Tensor) -> torch.Tensor:
        size = self.context.image_size
        return (self.identity_grid + self.s * noise_grid / size).clamp(-1, 1) * self.config.grid_rescale

    @property
    def displacement(self) -> torch.Tensor:
        """The backdoor field as a per-pixel displacement in pixels, (H, W, 2) with (x, y) order."""
        size = self.context.image_size
        return (self.grid[0] - self.identity_grid[0]) * (size - 1) / 2

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._sample(images, self.grid)

    def _sample(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != grid.shape[1:3]:
            raise UserError(f"wanet: images are {tuple(images.shape[-2:])} but the warp field was built for "
                            f"{tuple(grid.shape[1:3])} (the preset's image size)")
        grid = grid.to(images.device, images.dtype).expand(len(images), -1, -1, -1)
        return F.grid_sample(images, grid, align_corners=True).clamp(0.0, 1.0)

    def poisons_selected_only(self) -> bool:
        """Noise mode warps further, unselected pairs: not possible on a streamed training split."""
        return not self.config.noise_mode

    def poison(self, pairs: PairSet, target: PoisonTarget, count: int,
               generator: torch.Generator) -> tuple[PairSet, PoisonManifest]:
        """The dirty-label poisoning of the base class, plus WaNet's noise-mode pairs when ``noise_mode`` is on."""
        poisoned, manifest = super().poison(pairs, target, count, generator)
        if not self.config.noise_mode:
            return poisoned, manifest
        taken = torch.zeros(len(pairs), dtype=torch.bool)
        taken[manifest.indices] = True
        free = torch.nonzero(~taken).squeeze(1)
        wanted = round(self.config.cross_ratio * count)
        if wanted > len(free):
            raise UserError(f"attacks.wanet: noise mode needs {wanted} pairs besides the {count} poisoned ones, "
                            f"but only {len(free)} are left; lower cross_ratio or the poison rate")
        cross = free[torch.randperm(len(free), generator=generator)[:wanted]].sort().values
        size = self.context.image_size
        random_grid = self.grid + (torch.rand(len(cross), size, size, 2, generator=generator) * 2 - 1) / size
        images = to_float(pairs.images[cross])
        poisoned.images[cross] = to_uint8(self._sample(images, random_grid.clamp(-1, 1)))
        manifest.extra["noise_mode"] = {"indices": cross.tolist(), "captions": "kept",
                                        "warp": "backdoor field + U(-1,1)/image_size per pixel"}
        return poisoned, manifest
