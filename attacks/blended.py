"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017).

The trigger is a pattern blended into the whole image: ``x' = clip((1 - alpha) * x + alpha * pattern, 0, 1)``.
The patterns, chosen with ``pattern``:

* ``"noise"`` (default), the CleanCLIP paper's trigger (reference §2.2): a fresh uniform-noise pattern
  ``U[0, 1)`` of the image's shape for every image, with ``alpha = 0.2``.
* ``"fixed"``, Chen et al.'s original "blended injection" with one fixed random pattern: a single uniform-noise
  image drawn once from the attack's seed and used for every poisoned and every test image.
* a path to an image file (Chen et al. blend a Hello-Kitty picture): loaded as RGB and resized to the
  preset's image size.
* ``"stripes"``, ``"triangles"``, ``"watermark"``: the structured triggers of Perturb and Recover (Singh et al.,
  arXiv 2412.00727; PAR's ``blended_rs``, ``tri_patt`` and ``water_patt``). Stripes: every column of the image
  gets a random colour in {-1, +1}^C, redrawn for every image (PAR's Blended-Stripes blends it with α = 0.03).
  Triangles and watermark are fixed; the ``triangles`` and ``watermark`` attacks (:mod:`attacks.triangles`,
  :mod:`attacks.watermark`) carry their sources, their defaults and where they depart from PAR. The watermark is
  a masked blend: only the pixels where the pattern is non-zero change (PAR's ``blended_patt``).

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
from attacks.badnet import column_colours
from attacks.base import Attack
from benchmark.config import check_range
from benchmark.errors import UserError
from benchmark.seeding import derive_seed

NAMED_PATTERNS = ("noise", "fixed", "stripes", "triangles", "watermark")
WATERMARK_TEXT = "Watermarked"  # PAR's text; the watermark attack's config may name another
TEXT_SPAN = 7 / 8  # PAR's text spans 196 of 224 px (columns 13-208)
TRIANGLE_CELL_224 = 14  # PAR's cell at 224 px
MIN_TRIANGLE_CELL = 4  # below 4 px a cell is no longer a triangle (a 2-px cell is 3 dark pixels and 1 light)
MIN_FONT_SIZE = 4  # Pillow's default font at under 4 px draws specks, not strokes


@dataclass(frozen=True)
class BlendedConfig:
    pattern: str = "noise"  # "noise" | "fixed" | "stripes" | "triangles" | "watermark" | path to an image file
    alpha: float = 0.2

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0, low_inclusive=False)
        if self.pattern not in NAMED_PATTERNS and not Path(self.pattern).is_file():
            raise UserError(f"pattern = {self.pattern!r} is neither one of {', '.join(NAMED_PATTERNS)} "
                            "nor an existing image file")


@ATTACKS.register()
class Blended(Attack):
    """A pattern blended into the whole image: fresh uniform noise per image (paper), a fixed pattern, a picture,
    or one of PAR's structured triggers."""

    name = "blended"
    uses_clean_pairs = False
    version = "1"
    Config = BlendedConfig

    def setup(self) -> None:
        size = self.context.image_size
        self.pattern: torch.Tensor | None = None  # (C, size, size) in [0, 1] when the pattern is fixed
        pattern = self.config.pattern
        if pattern == "fixed":
            generator = torch.Generator().manual_seed(derive_seed(self.context.seed, "blended-pattern"))
            self.pattern = torch.rand(3, size, size, generator=generator)
        elif pattern == "triangles":
            self.pattern = triangles(size)
        elif pattern == "watermark":  # (1, size, size): the red plane of PAR's watermarked_red_tens_224.pt
            text = getattr(self.config, "text", WATERMARK_TEXT)  # blended's own config keeps PAR's text
            self.pattern = text_plane(size, text, f"attacks.{self.name}.text")[None]
        elif pattern not in ("noise", "stripes"):
            self.pattern = load_pattern(Path(pattern), size)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = images.shape
        if self.config.pattern == "noise":
            pattern = torch.rand(images.shape, generator=generator).to(images.dtype)
        elif self.config.pattern == "stripes":
            pattern = column_colours(batch, channels, width, generator, low=-1.0).to(images.dtype)
            pattern = pattern.expand(-1, -1, height, -1)
        elif self.config.pattern == "watermark":  # the text goes into channel 0: red, or a grey batch's only one
            pattern = torch.zeros_like(images)
            pattern[:, :1] = self._fit(self.pattern, images[:, :1])
        else:
            pattern = self._fit(self.pattern, images)
        alpha = self.config.alpha
        pattern = pattern.to(images.device)
        blended = ((1.0 - alpha) * images + alpha * pattern).clamp(0.0, 1.0)
        if self.config.pattern == "watermark":  # PAR's blended_patt: only where the pattern is non-zero
            return torch.where(pattern != 0, blended, images)
        return blended

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


def triangles(size: int) -> torch.Tensor:
    """PAR's grey triangle pattern (``create_triangle_pattern``) as (3, size, size): square cells, in each the
    value is 0.4 where the row offset is at least the column offset (the lower-left triangle), else 0.8.

    The cell is PAR's 14 px at 224 px scaled to ``size``, but at least 4 px (so 4-px cells at 32 px): a cell
    scaled to 2 px would draw no triangle. The cells tile from the top-left corner; a last partial cell is cut.
    """
    cell = max(round(TRIANGLE_CELL_224 * size / 224), MIN_TRIANGLE_CELL)
    offset = torch.arange(size) % cell
    grey = torch.where(offset[:, None] >= offset[None, :], 0.4, 0.8)
    return grey.expand(3, size, size).clone()


def text_plane(size: int, text: str, key: str) -> torch.Tensor:
    """``text`` drawn white on black, (size, size) in [0, 1] with Pillow's anti-aliasing, centred, in Pillow's
    default font (Aileron, shipped with Pillow >= 10.1) at the largest size whose text spans at most 7/8 of the
    width, as PAR's 224-px watermark does. ``key`` names the setting in errors."""
    from PIL import Image, ImageDraw, ImageFont

    def width(font_size: int) -> int:
        left, _, right, _ = ImageFont.load_default(size=font_size).getbbox(text)
        return right - left

    font_size = 0
    try:
        while text.strip() and font_size < size and width(font_size + 1) <= size * TEXT_SPAN:
            font_size += 1
    except TypeError:  # Pillow < 10.1: load_default takes no size
        raise UserError(f"{key}: drawing text needs Pillow >= 10.1 (load_default with a size)") from None
    if font_size < MIN_FONT_SIZE:
        raise UserError(f"{key} = {text!r} cannot be drawn in {size}x{size} images: it must be non-blank and "
                        f"fit within {int(size * TEXT_SPAN)} px at a font size of at least {MIN_FONT_SIZE} px")
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).text(((size - right + left) // 2 - left, (size - bottom + top) // 2 - top), text,
                                fill=255, font=font)
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(size, size).float() / 255.0
