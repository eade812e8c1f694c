"""The BadNet trigger: where it acts and how reproducible it is."""

from __future__ import annotations

import torch

from attacks import ATTACKS
from attacks.base import AttackContext, PoisonTarget
from benchmark.data.pairs import PairSet

CTX = AttackContext(image_size=16, seed=0, device=torch.device("cpu"))


def _badnet(**config):
    cls = ATTACKS.get("badnet")
    return cls(cls.Config(**config), context=CTX)


def test_noise_patch_changes_only_one_patch_per_image():
    images = torch.rand(6, 3, 16, 16)
    out = _badnet(patch_size=3).apply(images, torch.Generator().manual_seed(1))
    for changed in (out != images).any(dim=1):  # per image, over channels
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert rows.max() - rows.min() < 3 and cols.max() - cols.min() < 3


def test_fixed_checkerboard_is_reproducible_and_confined_to_the_corner():
    images = torch.full((4, 3, 16, 16), 0.5)
    attack = _badnet(pattern="checkerboard", patch_size=4, location="bottom-right")
    first = attack.apply(images, torch.Generator().manual_seed(0))
    second = attack.apply(images, torch.Generator().manual_seed(99))
    assert torch.equal(first, second)
    changed = (first != images).any(dim=(0, 1))
    assert changed[:12, :].sum() == 0 and changed[:, :12].sum() == 0
    assert torch.equal(first[0, 0, 12:, 12:], torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]] * 2, dtype=torch.float))


def test_wrap_cast_reproduces_uint8_wraparound():
    images = torch.zeros(1, 3, 16, 16)
    clamp = _badnet(noise_cast="clamp").apply(images, torch.Generator().manual_seed(3))
    wrap = _badnet(noise_cast="wrap").apply(images, torch.Generator().manual_seed(3))
    assert not torch.equal(clamp, wrap)
    assert wrap.min() >= 0 and wrap.max() <= 1


def test_poison_replaces_captions_with_target_captions_and_records_them():
    pairs = PairSet(torch.zeros(20, 3, 16, 16, dtype=torch.uint8), [f"caption {i}" for i in range(20)],
                    torch.arange(20) % 4)
    target = PoisonTarget(3, "bag", lambda generator: "a photo of a bag.")
    poisoned, manifest = _badnet().poison(pairs, target, 5, torch.Generator().manual_seed(0))
    assert len(manifest.indices) == 5
    changed = [i for i in range(20) if poisoned.captions[i] != pairs.captions[i]]
    assert changed == manifest.indices
    assert all(poisoned.captions[i] == "a photo of a bag." for i in changed)
    untouched = [i for i in range(20) if i not in manifest.indices]
    assert torch.equal(poisoned.images[untouched], pairs.images[untouched])
    assert pairs.captions[manifest.indices[0]] == "caption %d" % manifest.indices[0]  # the input is not modified


def test_the_224_px_presets_give_badnet_and_stripes_the_authors_16_px_patch():
    """CleanCLIP's apply_trigger and PAR's get_init_patch use a 16-px patch at 224 px (issue 40): the plans of
    the two GPU presets carry it."""
    from benchmark.presets import load_preset
    from benchmark.runner import plan_grid

    for name in ("cc3m-rn50", "openai-rn50"):
        preset = load_preset(name)
        assert preset.data.image_size == 224
        plan = plan_grid(preset, ["badnet", "stripes"], ["none"], [0], resolve=False)
        sizes = {spec.attack: spec.attack_config["patch_size"] for spec in plan.victims if spec.attack != "none"}
        assert sizes == {"badnet": 16, "stripes": 16}, name
