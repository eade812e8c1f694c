"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017).

The trigger is a pattern blended into the whole image: ``x' = (1 - alpha) * x + alpha * pattern``. Three
patterns, chosen with ``pattern``:

* ``"noise"`` (default), the CleanCLIP paper's trigger (reference §2.2): a fresh uniform-noise pattern
  ``U[0, 1)`` of the image's shape for every image, with ``alpha = 0.2``.
* ``"fixed"``, Chen et al.'s original "blended injection" with one fixed random pattern: a single uniform-noise
  image drawn once from the attack's seed and used for every poisoned and every test image.
* a path to an image file (Chen et al. blend a Hello-Kitty picture): loaded as RGB and resized to the
  preset's image size.

Deviations, on purpose:

* The CleanCLIP code draws the noise with the global RNG and no seed; here every draw comes from a seeded
  generator, so poisoning and evaluation are reproducible.
* The CleanCLIP trigger is applied at 224 px; here at the preset's resolution (the pattern is drawn per pixel,
  so nothing else changes).
* Chen et al. blend at training time with ``alpha = 0.2`` and test with a stronger blend; here one ``alpha``
  serves both, as in the CleanCLIP code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from attacks import ATTACKS
from attacks.base import Attack
from benchmark.config import check_range
from benchmark.errors import UserError
from benchmark.seeding import derive_seed

NAMED_PATTERNS = ("noise", "fixed")


@dataclass(frozen=True)
class BlendedConfig:
    pattern: str = "noise"  # "noise" | "fixed" | path to an image file
    alpha: float = 0.2

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0, low_inclusive=False)
        if self.pattern not in NAMED_PATTERNS and not Path(self.pattern).is_file():
            raise UserError(f"pattern = {self.pattern!r} is neither one of {', '.join(NAMED_PATTERNS)} "
                            "nor an existing image file")


@ATTACKS.register()
class Blended(Attack):
    """A pattern blended into the whole image: fresh uniform noise per image (paper), a fixed pattern, or a picture."""

    name = "blended"
    version = "1"
    Config = BlendedConfig

    def setup(self) -> None:
        size = self.context.image_size
        self.pattern: torch.Tensor | None = None  # (3, size, size) in [0, 1] when the pattern is fixed
        if self.config.pattern == "fixed":
            generator = torch.Generator().manual_seed(derive_seed(self.context.seed, "blended-pattern"))
            self.pattern = torch.rand(3, size, size, generator=generator)
        elif self.config.pattern != "noise":
            self.pattern = load_pattern(Path(self.config.pattern), size)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pattern is None:
            pattern = torch.rand(images.shape, generator=generator).to(images.dtype)
        else:
            pattern = self._fit(self.pattern, images)
        alpha = self.config.alpha
        return ((1.0 - alpha) * images + alpha * pattern.to(images.device)).clamp(0.0, 1.0)

    @staticmethod
    def _fit(pattern: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The fixed pattern at the batch's size and channel count (grayscale batches get the channel mean)."""
        height, width = images.shape[-2:]
        if pattern.shape[-2:] != (height, width):
            pattern = F.interpolate(pattern[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if images.shape[1] != pattern.shape[0]:
            pattern = pattern.mean(0, keepdim=True).expand(images.shape[1], -1, -1)
        return pattern.to(images.dtype).expand_as(images)


def load_pattern(path: Path, size: int) -> torch.Tensor:
    """An image file as a float RGB tensor (3, size, size) in [0, 1], resized bilinearly."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"attacks.blended.pattern: cannot read image file {path}: {error}") from None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float() / 255.0
