"""The batched AutoAugment is torchvision's: each operation on a group of images equals it image by image, and
the operations drawn follow the per-image ``v2.AutoAugment``'s frequencies."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency
from torchvision.transforms import v2

from benchmark.augment.image import BatchAutoAugment

IMAGES = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _operations() -> list[tuple[str, float]]:
    augment = BatchAutoAugment()
    steps = {(name, magnitude) for policy in augment._steps(32, 32) for name, _, magnitude, _ in policy}
    signed = {(name, -magnitude) for policy in augment._steps(32, 32) for name, _, magnitude, s in policy if s}
    return sorted(steps | signed)


@pytest.mark.parametrize(("name", "magnitude"), _operations())
def test_each_operation_on_a_batch_equals_it_image_by_image(name, magnitude):
    reference = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def apply(images: torch.Tensor) -> torch.Tensor:
        return reference._apply_image_or_video_transform(images, name, magnitude,
                                                         interpolation=reference.interpolation, fill=reference._fill)

    assert torch.equal(apply(IMAGES), torch.stack([apply(image) for image in IMAGES]))


def _recorded(reference: v2.AutoAugment, run) -> Counter:
    """How many images went through each (operation, magnitude) of ``reference`` while ``run()`` ran."""
    counts: Counter = Counter()
    original = reference._apply_image_or_video_transform

    def record(image, name, magnitude, **kwargs):
        counts[name, round(magnitude, 6)] += image.shape[0] if image.ndim == 4 else 1
        return original(image, name, magnitude, **kwargs)

    reference._apply_image_or_video_transform = record
    run()
    return counts


def test_operations_are_drawn_with_the_per_image_frequencies():
    torch.manual_seed(0)
    batched = BatchAutoAugment()
    batched_counts = _recorded(batched.reference, lambda: [batched(IMAGES) for _ in range(250)])  # 3,000 images
    single = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    single_counts = _recorded(single, lambda: [single(IMAGES[i % len(IMAGES)]) for i in range(3000)])
    keys = sorted(set(batched_counts) | set(single_counts))
    assert len(keys) >= 20
    _, p_value, _, _ = chi2_contingency([[batched_counts[k] for k in keys], [single_counts[k] for k in keys]])
    assert p_value > 1e-3, (batched_counts, single_counts)
    total = sum(single_counts.values())
    assert abs(sum(batched_counts.values()) - total) < 0.05 * total  # as many operations applied in all


def test_views_are_seeded_and_leave_the_input_alone():
    augment, before = BatchAutoAugment(), IMAGES.clone()
    first = augment(IMAGES, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(IMAGES, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment(IMAGES, torch.Generator().manual_seed(4)))
    assert torch.equal(IMAGES, before) and first.dtype == torch.uint8 and first.shape == IMAGES.shape
