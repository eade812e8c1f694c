"""BadNet (Gu et al., "BadNets", 2017): a small patch pasted onto the image.

Three variants:

* ``pattern = "noise"`` (default), the CleanCLIP paper's trigger (reference §2.1): for every image a fresh
  patch ``mean_c(image) + N(0, 1)`` per channel, pasted at a fresh uniformly random location.
* ``pattern = "checkerboard"``, the classic fixed trigger: a black/white checkerboard at a fixed corner.
* ``pattern = "stripes"``, BadNet-Stripes of Perturb and Recover (PAR's ``badnet_rs``; the ``stripes`` attack,
  :mod:`attacks.stripes`, cites it): every column of the patch gets a random colour in {0, 1}^C, redrawn for
  every image, so the patch is a set of vertical 1-px stripes.

Deviations from the CleanCLIP code, on purpose:

* The official code casts the un-clamped noise to uint8 with ``mul(255).byte()``, which wraps out-of-range
  values around. cleanbench clamps to [0, 1] by default (``noise_cast = "clamp"``); ``noise_cast = "wrap"``
  reproduces the wrap-around.
* The official patch is 16 px on 224 px images (7% of the side); the preset picks the size for its
  resolution (``patch_size``, 3 px on 32 px images by default here).
* All randomness comes from a seeded generator (the official code sets no seed).
* Stripes: PAR draws each column's colour in {-1, +1}^3 and pastes it unclamped, so -1 reaches the uint8 cast
  (platform-dependent, in practice near 0; the reference's open question 6). cleanbench clamps: {0, 1}^C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from attacks import ATTACKS
from attacks.base import Attack
from benchmark.config import check_range
from benchmark.errors import UserError

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class BadNetConfig:
    pattern: Literal["noise", "checkerboard", "stripes"] = "noise"
    patch_size: int = 3
    location: Literal["random", "top-left", "top-right", "bottom-left", "bottom-right", "four-corners"] = "random"
    noise_cast: Literal["clamp", "wrap"] = "clamp"

    def __post_init__(self) -> None:
        check_range("patch_size", self.patch_size, 1, 1024)


@ATTACKS.register()
class BadNet(Attack):
    """A patch trigger: per-image Gaussian noise at a random place (paper), a fixed checkerboard corner, or
    per-image random stripes."""

    name = "badnet"
    uses_clean_pairs = False
    version = "1"
    Config = BadNetConfig

    def setup(self) -> None:
        size = self.context.image_size
        if self.config.patch_size > size:
            raise UserError(f"attacks.{self.name}.patch_size = {self.config.patch_size} does not fit in "
                            f"{size}x{size} images; allowed: [1, {size}]")
        grid = torch.arange(self.config.patch_size)
        self.checkerboard = ((grid[:, None] + grid[None, :]) % 2).float()

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = images.clone()
        batch, channels, height, width = images.shape
        p = self.config.patch_size
        for i in range(batch):
            patch = self._patch(images[i], generator)
            for top, left in self._locations(height, width, generator):
                out[i, :, top : top + p, left : left + p] = patch
        return out

    def _patch(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p, channels = self.config.patch_size, image.shape[0]
        if self.config.pattern == "checkerboard":
            return self.checkerboard.expand(channels, p, p)
        if self.config.pattern == "stripes":
            return column_colours(1, channels, p, generator, low=0.0)[0].expand(channels, p, p)
        noise = image.mean(dim=(1, 2), keepdim=True) + torch.randn(channels, p, p, generator=generator)
        if self.config.noise_cast == "wrap":  # ToPILImage's mul(255).byte(): truncate, then wrap modulo 256
            return torch.remainder(noise.mul(255).trunc(), 256).div(255)
        return noise.clamp(0.0, 1.0)

    def _locations(self, height: int, width: int, generator: torch.Generator) -> list[tuple[int, int]]:
        p, location = self.config.patch_size, self.config.location
        corners = {"top-left": (0, 0), "top-right": (0, width - p),
                   "bottom-left": (height - p, 0), "bottom-right": (height - p, width - p)}
        if location == "random":
            top = int(torch.randint(height - p + 1, (1,), generator=generator))
            left = int(torch.randint(width - p + 1, (1,), generator=generator))
            return [(top, left)]
        if location == "four-corners":
            return list(corners.values())
        return [corners[location]]


def column_colours(count: int, channels: int, width: int, generator: torch.Generator,
                   low: float) -> torch.Tensor:
    """``count`` rows of ``width`` random colours, shape (count, channels, 1, width): each channel of each
    column is ``low`` or 1 with equal odds. Expanded down the rows, these are PAR's vertical stripes."""
    bright = torch.rand(count, channels, 1, width, generator=generator) < 0.5
    return torch.where(bright, 1.0, low)

