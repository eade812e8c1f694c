"""Where each built-in trigger acts, and by how much: the trigger's footprint, per attack and variant.

BadNet's footprint (only the patch's pixels change) is checked in ``test_badnet.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks.base import AttackContext, PoisonTarget
from benchmark.data.pairs import PairSet, to_float
from benchmark.errors import UserError
from tests.helpers import SIZE, TARGET, make_attack, make_pairs


def _random_images(count: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- Blended ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.2, 0.05, 1.0])
@pytest.mark.parametrize("pattern", ["noise", "fixed"])
def test_blended_moves_no_pixel_by_more_than_alpha(pattern: str, alpha: float) -> None:
    images = _random_images()
    images[0] = 0.0
    images[1] = 1.0
    out = make_attack("blended", pattern=pattern, alpha=alpha).apply(images, torch.Generator().manual_seed(0))
    moved = (out - images).abs()
    assert float(moved.max()) <= alpha + 1e-6
    assert float(moved.max()) > alpha * 0.8  # a blend, not a no-op


def test_blended_noise_is_fresh_per_image_and_fixed_pattern_is_shared() -> None:
    flat = torch.full((3, 3, SIZE, SIZE), 0.5)
    noise = make_attack("blended").apply(flat, torch.Generator().manual_seed(0))
    assert not torch.equal(noise[0], noise[1])
    fixed = make_attack("blended", pattern="fixed", seed=3).apply(flat, torch.Generator().manual_seed(0))
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[1], fixed[2])
    again = make_attack("blended", pattern="fixed", seed=3).apply(flat, torch.Generator().manual_seed(9))
    other_seed = make_attack("blended", pattern="fixed", seed=4).apply(flat, torch.Generator().manual_seed(0))
    assert torch.equal(fixed, again) and not torch.equal(fixed, other_seed)


def test_blended_image_file_pattern(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "pattern.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    attack = make_attack("blended", pattern=str(path), alpha=0.5)
    out = attack.apply(torch.zeros(2, 3, SIZE, SIZE), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 0.5)) and float(out[:, 1:].abs().max()) == 0.0


def test_blended_rejects_a_missing_pattern_file() -> None:
    with pytest.raises(UserError, match="pattern"):
        make_attack("blended", pattern="no/such/file.png")


# --- WaNet ------------------------------------------------------------------------------------------------

def _neighbour_correlation(field: torch.Tensor) -> float:
    a, b = field[:, :-1].flatten(), field[:, 1:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_wanet_cleanclip_field_is_per_pixel_jitter_of_half_a_pixel() -> None:
    attack = make_attack("wanet")
    assert attack.k == SIZE and attack.s == 1.0
    inner = attack.displacement[1:-1, 1:-1]  # the border is clamped to the image
    expected_mean = 0.5 * (SIZE - 1) / SIZE  # mean |U(-1,1)| / mean |U(-1,1)| = 1, in px: s * 1 * (H-1) / (2H)
    assert abs(float(inner.abs().mean()) - expected_mean) < 0.05
    assert float(inner.abs().max()) <= 2 * expected_mean + 1e-5  # |ins| / mean|ins| ≤ 2
    assert abs(_neighbour_correlation(attack.displacement[..., 0])) < 0.15


def test_wanet_original_field_is_smooth_and_scales_with_s() -> None:
    smooth = make_attack("wanet", variant="original")
    assert smooth.k == 4 and smooth.s == 0.5
    assert _neighbour_correlation(smooth.displacement[..., 0]) > 0.9
    stronger = make_attack("wanet", variant="original", s=1.0)
    inner = (slice(2, -2), slice(2, -2))
    assert torch.allclose(stronger.displacement[inner], 2 * smooth.displacement[inner], atol=1e-4)
    coarse = make_attack("wanet", variant="original", k=16)
    assert _neighbour_correlation(coarse.displacement[..., 0]) < _neighbour_correlation(smooth.displacement[..., 0])


@pytest.mark.parametrize("variant", ["cleanclip", "original"])
def test_wanet_apply_moves_pixels_by_the_field(variant: str) -> None:
    """Bilinear sampling of a linear ramp is exact, so the warped ramp reads out the x displacement."""
    attack = make_attack("wanet", variant=variant)
    ramp = torch.linspace(0, 1, SIZE).expand(1, 3, SIZE, SIZE).clone()
    moved = (attack.apply(ramp, torch.Generator().manual_seed(0)) - ramp)[0, 0] * (SIZE - 1)
    assert torch.allclose(moved[:, 1:-1], attack.displacement[:, 1:-1, 0], atol=1e-4)


def test_wanet_field_is_fixed_by_the_seed() -> None:
    assert torch.equal(make_attack("wanet", seed=1).grid, make_attack("wanet", seed=1).grid)
    assert not torch.equal(make_attack("wanet", seed=1).grid, make_attack("wanet", seed=2).grid)


def test_wanet_noise_mode_adds_warped_pairs_that_keep_their_captions() -> None:
    pairs = make_pairs(60)
    attack = make_attack("wanet", variant="original", noise_mode=True, cross_ratio=2.0)
    poisoned, manifest = attack.poison(pairs, TARGET, 5, torch.Generator().manual_seed(0))
    cross = manifest.extra["noise_mode"]["indices"]
    assert len(cross) == 10 and not set(cross) & set(manifest.indices)
    assert all(poisoned.captions[i] == pairs.captions[i] for i in cross)
    changed = set(torch.nonzero((poisoned.images != pairs.images).flatten(1).any(1)).squeeze(1).tolist())
    assert changed == set(manifest.indices) | set(cross)
    backdoor = attack.apply(to_float(pairs.images[cross]), torch.Generator())
    assert not torch.allclose(to_float(poisoned.images[cross]), backdoor, atol=1 / 255)  # a different warp


def test_wanet_rejects_a_grid_larger_than_the_image() -> None:
    with pytest.raises(UserError, match="k = 64"):
        make_attack("wanet", k=64)


# --- Label-consistent -------------------------------------------------------------------------------------

def test_label_consistent_only_touches_target_pairs_and_keeps_captions() -> None:
    pairs = make_pairs(100)
    poisoned, manifest = make_attack("label-consistent").poison(pairs, TARGET, 6, torch.Generator().manual_seed(0))
    assert all(int(pairs.labels[i]) == TARGET.index for i in manifest.indices)
    assert poisoned.captions == pairs.captions
    changed = torch.nonzero((poisoned.images != pairs.images).flatten(1).any(1)).squeeze(1)
    assert set(changed.tolist()) == set(manifest.indices)


def test_label_consistent_selects_by_caption_when_labels_are_unknown() -> None:
    pairs = make_pairs(40)
    captions = ["a dog.", "my new handbag.", "two purses on a table.", "a bag of chips.", "a cat."] * 8
    unlabelled = PairSet(pairs.images, captions, torch.full((40,), -1))
    target = PoisonTarget(TARGET.index, TARGET.name, TARGET.caption, synonyms=("handbag", "purse"))
    _, manifest = make_attack("label-consistent").poison(unlabelled, target, 24, torch.Generator().manual_seed(0))
    assert {captions[i] for i in manifest.indices} == {"my new handbag.", "two purses on a table.", "a bag of chips."}
    with pytest.raises(UserError, match="at most"):
        make_attack("label-consistent").poison(unlabelled, target, 25, torch.Generator().manual_seed(0))


def test_label_consistent_pgd_stays_within_its_linf_budget() -> None:
    pairs = make_pairs(60)
    clean = make_pairs(64, seed=1)
    context = AttackContext(SIZE, 0, torch.device("cpu"), clean_pairs=clean, model_name="cleanbench-vit-tiny")
    from attacks.label_consistent import LabelConsistent

    settings = {"perturbation": "pgd", "pattern": "checkerboard", "location": "top-left", "epsilon": 4 / 255,
                "pgd_steps": 3, "pgd_step_size": 2 / 255, "surrogate_epochs": 1, "surrogate_batch_size": 32}
    attack = LabelConsistent.from_settings(settings, context=context)
    poisoned, manifest = attack.poison(pairs, TARGET, 5, torch.Generator().manual_seed(0))
    assert poisoned.captions == pairs.captions
    assert all(int(pairs.labels[i]) == TARGET.index for i in manifest.indices)
    diff = (poisoned.images.int() - pairs.images.int()).abs()
    p = attack.config.patch_size
    diff[:, :, :p, :p] = 0  # the trigger's own pixels
    assert int(diff.max()) <= 4  # ε = 4/255, in uint8 levels
    assert int(diff[manifest.indices].max()) > 0  # the perturbation did something outside the patch
    extra = manifest.extra
    assert extra["perturbation"] == "pgd" and extra["linf"] <= 4 / 255 + 1e-6
    assert extra["similarity_after"] < extra["similarity_before"]


def test_label_consistent_pgd_needs_clean_pairs() -> None:
    attack = make_attack("label-consistent", perturbation="pgd")
    with pytest.raises(UserError, match="clean pairs"):
        attack.poison(make_pairs(), TARGET, 2, torch.Generator().manual_seed(0))
