"""In-memory containers for image–caption pairs and labelled evaluation images.

Small presets keep decoded uint8 images in one tensor, so training does no per-step PIL work; attacks see
float images in [0, 1] and write back uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairSet:
    """Image–caption pairs. ``labels`` is the class of each image where known (-1 otherwise), for analysis only."""

    images: torch.Tensor  # uint8, (N, 3, H, W)
    captions: list[str]
    labels: torch.Tensor  # int64, (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("PairSet.images must be a uint8 tensor of shape (N, C, H, W)")
        if not (len(self.images) == len(self.captions) == len(self.labels)):
            raise ValueError("PairSet images, captions and labels must have the same length")

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: torch.Tensor) -> "PairSet":
        idx = indices.tolist()
        return PairSet(self.images[indices].clone(), [self.captions[i] for i in idx], self.labels[indices].clone())

    def copy(self) -> "PairSet":
        return PairSet(self.images.clone(), list(self.captions), self.labels.clone())


@dataclass
class EvalSet:
    """Labelled images for zero-shot evaluation, with the class names and prompt templates of the classifier."""

    images: torch.Tensor  # uint8, (N, 3, H, W)
    labels: torch.Tensor  # int64, (N,)
    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])

    def __len__(self) -> int:
        return len(self.labels)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]."""
    return images.float().div_(255.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8, rounding to the nearest level."""
    return images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
