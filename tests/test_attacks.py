"""Checks every registered attack (built-in or plugin) passes, whatever it is: the ``Attack`` contract.

Per-attack footprint checks (what each trigger may touch) live in ``test_attacks_footprint.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks import ATTACKS
from benchmark.plugins import load_entry_points
from tests.helpers import SIZE, TARGET, make_attack, make_pairs

load_entry_points()
NAMES = ATTACKS.names()


def test_builtins_are_registered() -> None:
    assert {"badnet", "blended", "wanet", "label-consistent", "badclip"} <= set(NAMES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_apply_keeps_shape_dtype_and_range(name: str, dtype: torch.dtype) -> None:
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    images[0] = 0.0
    images[1] = 1.0
    out = make_attack(name).apply(images.clone(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, images), "the trigger changed nothing"


@pytest.mark.parametrize("name", NAMES)
def test_apply_does_not_modify_its_input(name: str) -> None:
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    before = images.clone()
    make_attack(name).apply(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_output(name: str) -> None:
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    first = make_attack(name, seed=7).apply(images, torch.Generator().manual_seed(11))
    second = make_attack(name, seed=7).apply(images, torch.Generator().manual_seed(11))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_poison_changes_exactly_what_the_manifest_lists(name: str) -> None:
    pairs = make_pairs()
    attack = make_attack(name)
    poisoned, manifest = attack.poison(pairs, TARGET, 4, torch.Generator().manual_seed(5))
    assert len(manifest.indices) == len(set(manifest.indices)) == 4
    assert manifest.attack == name and manifest.target == "bag" and manifest.seed == 0
    assert manifest.captions_before == [pairs.captions[i] for i in manifest.indices]
    assert manifest.captions_after == [poisoned.captions[i] for i in manifest.indices]
    image_changed = (poisoned.images != pairs.images).flatten(1).any(1)
    caption_changed = torch.tensor([a != b for a, b in zip(poisoned.captions, pairs.captions)])
    listed = torch.zeros(len(pairs), dtype=torch.bool)
    listed[manifest.indices] = True
    assert not (image_changed & ~listed).any(), "a pair outside the manifest was changed"
    assert not (caption_changed & ~listed).any()
    assert image_changed[listed].all(), "a listed pair's image was not triggered"
    if attack.dirty_label:
        assert all(caption.startswith("a photo of a bag") for caption in manifest.captions_after)
    else:
        assert manifest.captions_after == manifest.captions_before
    assert torch.equal(poisoned.labels, pairs.labels)
    manifest.to_json()  # JSON-ready for the artifact store


@pytest.mark.parametrize("name", NAMES)
def test_poison_is_deterministic(name: str) -> None:
    pairs = make_pairs()
    first, manifest_a = make_attack(name).poison(pairs, TARGET, 4, torch.Generator().manual_seed(5))
    second, manifest_b = make_attack(name).poison(pairs, TARGET, 4, torch.Generator().manual_seed(5))
    assert torch.equal(first.images, second.images) and first.captions == second.captions
    assert manifest_a.to_json() == manifest_b.to_json()


@pytest.mark.parametrize("preset", ["tests/data/fmnist-test.toml", "fmnist-tiny"])
def test_presets_give_every_builtin_a_realistic_poison_rate(preset: str) -> None:
    from benchmark.presets import load_preset
    from benchmark.runner import plan_grid

    loaded = load_preset(str(Path(__file__).parent.parent / preset) if preset.endswith(".toml") else preset)
    builtins = NAMES
    plan = plan_grid(loaded, builtins, ["none"], [0])
    for name in builtins:
        assert 0 < loaded.attacks[name]["poison_rate"] <= 0.05
    assert {victim.attack for victim in plan.victims} == {"none", *builtins}
