"""SIG (Barni, Kallas & Tondi, "A New Backdoor Attack in CNNs by Training Set Corruption Without Label
Poisoning", ICIP 2019): a clean-label attack whose trigger is a sinusoidal signal added to the whole image,

    x' = clip(x + Δ · sin(2π · j · f / m), 0, 1),    j the column, m the image width,

constant down each column and the same in every channel (vertical bands), with Δ = 40/255 and f = 6 by default.
Only target pairs are poisoned, and they keep their captions: the model learns the signal as a feature of the
target because every triggered training image already is one.

Code source: BackdoorBench, ``SCLBD/BackdoorBench`` @ f02e353: the signal ``utils/bd_img_transform/sig.py``
L29-53 (the same at training and test time, L118-131 of ``utils/aggregate_block/bd_attack_generate.py``), the
defaults ``config/attack/sig/default.yaml`` L1-6 (``sig_delta 40``, ``sig_f 6``), the clean-label selection
``attack/sig.py`` L78-85 with ``utils/backdoor_generate_poison_index.py`` L53-60.

Which pairs count as target pairs: the rule of :mod:`attacks.label_consistent` (the label is the target, or the
caption names the target or a synonym); the poison count can be at most the number of such pairs.

Deviations, on purpose:

* BackdoorBench's ``pratio`` (0.1) is a fraction of the whole training set, all drawn from the target class;
  here the preset's poison rate is too, so at most the target's share of the pairs (about 0.1 on Fashion-MNIST).
* BackdoorBench works on uint8 pixels (Δ = 40 of 255) and casts back to uint8; here Δ is on [0, 1] images and
  poisoned training images are quantised to uint8 as every attack's are.
* The image is not resized to a model resolution first; ``m`` is the preset's image width.
* ``frequency`` must be at most half the width (a faster signal aliases into a slower one); BackdoorBench does
  not check.
* Other CLIP papers use other SIG variants (BadCLIP's Δ = 60/255 with dirty labels; Huang et al.'s blended
  ``SIG_noise.pt``); cleanbench follows BackdoorBench, the clean-label original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks import ATTACKS
from attacks.base import Attack, Pairs, PoisonTarget
from attacks.label_consistent import select_target_pairs
from benchmark.config import check_range
from benchmark.errors import UserError


@dataclass(frozen=True)
class SigConfig:
    delta: float = 40 / 255
    frequency: float = 6.0

    def __post_init__(self) -> None:
        check_range("delta", self.delta, 0.0, 1.0, low_inclusive=False)
        check_range("frequency", self.frequency, 0.0, 4096.0, low_inclusive=False)


@ATTACKS.register()
class Sig(Attack):
    """A sinusoidal signal added to target-class images that keep their captions (clean-label)."""

    name = "sig"
    uses_clean_pairs = False
    version = "1"
    Config = SigConfig
    dirty_label = False

    def setup(self) -> None:
        size = self.context.image_size
        if self.config.frequency > size / 2:
            raise UserError(f"attacks.{self.name}.frequency = {self.config.frequency} is above half the width of "
                            f"{size}x{size} images, so it would alias; allowed: (0, {size / 2:g}]")

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        signal = sig_signal(images.shape[-1], self.config.delta, self.config.frequency)
        return (images + signal.to(images.device, images.dtype)).clamp(0.0, 1.0)

    def select(self, pairs: Pairs, target: PoisonTarget, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` pairs drawn at random among the target pairs (label-consistent's rule)."""
        return select_target_pairs(self.name, pairs, target, count, generator)


def sig_signal(width: int, delta: float, frequency: float) -> torch.Tensor:
    """``Δ · sin(2π · j · f / width)`` for columns ``j``, shaped (width,) to broadcast over rows and channels."""
    columns = torch.arange(width, dtype=torch.float64)
    return delta * torch.sin(2 * math.pi * columns * frequency / width)
