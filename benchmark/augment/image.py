"""AutoAugment (ImageNet policy) for a whole batch of uint8 images at once, as CleanCLIP's image augmentation.

CleanCLIP's official code (github.com/nishadsinghi/CleanCLIP @ d6e2f1dbf0ad952c05b816c6024d8205682a0674) makes
its augmented view with ``torchvision.transforms.AutoAugment()`` (``utils/augment_image.py`` L12-17), drawn anew
on every ``ImageCaptionDataset.__getitem__`` (``src/data.py`` L61-64). Here it serves every user of such views:
CleanCLIP and SSL-only, RoCLIP, SafeCLIP, the ``clip+ssl`` victim objective (through
:mod:`benchmark.augment.views`) and BadCLIP's trigger optimisation.

torchvision's ``v2.AutoAugment`` transforms one image per call, and on a small image that time is almost all
Python dispatch: on the tiny default, a large share of a CleanCLIP epoch (the epoch's cost against plain
finetuning: ``benchmarks/results/perf-2026-11-28.md``). Here every image still draws its own sub-policy, its
own coin for each of the sub-policy's two operations and its own sign, with
the probabilities and magnitudes of ``v2.AutoAugment`` (its policy table and magnitude space are read from it,
not copied); then the images that drew the same operation at the same magnitude go through torchvision's own
implementation of that operation together (``_apply_image_or_video_transform``, whose operations all act per
image on a batch). The distribution of augmented images is the per-image transform's; the random draws come in
another order, so the same seed gives other (equally distributed) views than ``v2.AutoAugment`` image by image.
``tests/test_augment.py`` checks both halves: each operation on a batch equals it image by image, and the
operations drawn match the per-image transform's frequencies (chi-square).
"""

from __future__ import annotations

import torch

# An operation as drawn for one image: (name, probability of applying it, magnitude, whether its sign is drawn).
Step = tuple[str, float, float, bool]


class BatchAutoAugment:
    """``v2.AutoAugment(AutoAugmentPolicy.IMAGENET)`` with per-image draws, applied a group of images at a time."""

    def __init__(self) -> None:
        from torchvision.transforms import v2

        self.reference = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
        self._resolved: dict[tuple[int, int], tuple[tuple[Step, ...], ...]] = {}

    def _steps(self, height: int, width: int) -> tuple[tuple[Step, ...], ...]:
        """Each sub-policy's operations with their magnitudes resolved for this image size (as ``forward``
        resolves them: 10 magnitude bins)."""
        if (height, width) in self._resolved:
            return self._resolved[height, width]
        space = self.reference._AUGMENTATION_SPACE
        policies = []
        for policy in self.reference._policies:
            steps = []
            for name, probability, magnitude_index in policy:
                magnitudes_fn, signed = space[name]
                magnitudes = magnitudes_fn(10, height, width)
                magnitude = float(magnitudes[magnitude_index]) if magnitudes is not None else 0.0
                steps.append((name, float(probability), magnitude, signed and magnitudes is not None))
            policies.append(tuple(steps))
        self._resolved[height, width] = tuple(policies)
        return self._resolved[height, width]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented copies of ``images`` (uint8, (N, C, H, W)); draws from ``generator`` (default: torch's
        global generator, which DataLoader seeds in each worker)."""
        policies = self._steps(*images.shape[-2:])
        count = len(images)
        chosen = torch.randint(len(policies), (count,), generator=generator).tolist()
        out = images.clone()
        for stage in range(max(len(policy) for policy in policies)):
            coins = torch.rand(count, generator=generator).tolist()
            flips = (torch.rand(count, generator=generator) <= 0.5).tolist()
            groups: dict[tuple[str, float], list[int]] = {}
            for index, policy in enumerate(chosen):
                if stage >= len(policies[policy]):
                    continue
                name, probability, magnitude, signed = policies[policy][stage]
                if not coins[index] <= probability:
                    continue
                groups.setdefault((name, -magnitude if signed and flips[index] else magnitude), []).append(index)
            for (name, magnitude), members in groups.items():
                rows = torch.tensor(members)
                out[rows] = self.reference._apply_image_or_video_transform(
                    out[rows], name, magnitude, interpolation=self.reference.interpolation, fill=self.reference._fill)
        return out


def auto_augment():
    """torchvision's AutoAugment with the ImageNet policy, on uint8 image tensors (one image per call: the
    per-image transform a streamed split's decoding workers apply)."""
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
