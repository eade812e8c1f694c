"""Known answers for issue 15's triggers: PAR's structured triggers (stripes, triangles, watermark) and SIG.

The contract every attack keeps (shape, range, manifest, determinism) is tested for them by ``test_attacks.py``;
here each trigger is checked against an independent construction of what its source computes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import AttackContext
from benchmark.data.pairs import PairSet
from benchmark.errors import UserError
from tests.helpers import SIZE, TARGET, make_attack, make_pairs


def _at_size(name: str, size: int, **config):
    from attacks import ATTACKS

    return ATTACKS.get(name).from_settings(config, context=AttackContext(size, 0, torch.device("cpu")))


def _grey(count: int = 4, value: float = 0.5, channels: int = 3) -> torch.Tensor:
    return torch.full((count, channels, SIZE, SIZE), value)


# --- SIG --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "frequency"), [(40 / 255, 6.0), (20 / 255, 3.0), (60 / 255, 16.0)])
def test_sig_adds_backdoorbench_signal(delta: float, frequency: float) -> None:
    """BackdoorBench's sig.py on a uint8 HWC image: pattern[i, j, :] = Δ·sin(2π·j·f/m), x' = clip(x + pattern)."""
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images[0] = 1.0  # the clip at both ends
    images[1] = 0.0
    out = make_attack("sig", delta=delta, frequency=frequency).apply(images, torch.Generator().manual_seed(0))
    hwc = images.permute(0, 2, 3, 1).numpy() * 255
    pattern = np.zeros((SIZE, SIZE, 3))
    for i in range(SIZE):
        for j in range(SIZE):
            pattern[i, j, :] = delta * 255 * np.sin(2 * np.pi * j * frequency / SIZE)
    expected = np.clip(hwc + pattern, 0, 255) / 255
    assert np.allclose(out.permute(0, 2, 3, 1).numpy(), expected, atol=1e-12)


def test_sig_is_vertical_bands_the_same_in_every_channel() -> None:
    out = make_attack("sig").apply(_grey(), torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :1, :1, :].expand_as(out))  # constant down each column and across channels
    assert float((out - 0.5).abs().max()) == pytest.approx(40 / 255, abs=1e-3)  # f = 6 of 32 reaches near the peak


def test_sig_poisons_only_target_pairs_and_keeps_their_captions() -> None:
    pairs = make_pairs(100)
    poisoned, manifest = make_attack("sig").poison(pairs, TARGET, 7, torch.Generator().manual_seed(0))
    assert all(int(pairs.labels[i]) == TARGET.index for i in manifest.indices) and len(manifest.indices) == 7
    assert poisoned.captions == pairs.captions and manifest.captions_after == manifest.captions_before
    changed = torch.nonzero((poisoned.images != pairs.images).flatten(1).any(1)).squeeze(1)
    assert set(changed.tolist()) == set(manifest.indices)


def test_sig_selects_by_caption_and_refuses_more_than_the_target_pairs() -> None:
    pairs = make_pairs(20)
    captions = ["a dog.", "my new handbag.", "a bag of chips.", "a cat."] * 5
    unlabelled = PairSet(pairs.images, captions, torch.full((20,), -1))
    _, manifest = make_attack("sig").poison(unlabelled, TARGET, 10, torch.Generator().manual_seed(0))
    assert {captions[i] for i in manifest.indices} == {"my new handbag.", "a bag of chips."}
    with pytest.raises(UserError, match=r"attacks\.sig: poison count 11 is larger than the 10 .* at most"):
        make_attack("sig").poison(unlabelled, TARGET, 11, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("config", "key"), [({"delta": 0.0}, "delta"), ({"delta": 1.5}, "delta"),
                                             ({"frequency": 0.0}, "frequency"), ({"frequency": 17.0}, "frequency")])
def test_sig_config_errors_name_the_key(config: dict, key: str) -> None:
    with pytest.raises(UserError, match=rf"{key} = .*allowed"):
        make_attack("sig", **config)


# --- Stripes (BadNet-Stripes) and Blended-Stripes ---------------------------------------------------------

def test_stripes_patch_columns_are_constant_and_binary() -> None:
    out = make_attack("stripes", patch_size=6).apply(_grey(8), torch.Generator().manual_seed(0))
    patches = []
    for image in out:
        rows, cols = torch.nonzero((image != 0.5).any(0), as_tuple=True)  # a 0/1 column can't stay 0.5
        top, left = int(rows.min()), int(cols.min())
        patch = image[:, top : top + 6, left : left + 6]
        assert int(rows.max()) - top < 6 and int(cols.max()) - left < 6, "changed pixels outside one 6-px patch"
        assert ((patch == 0) | (patch == 1)).all()
        assert torch.equal(patch, patch[:, :1].expand_as(patch)), "a column is not one colour"
        outside = image.clone()
        outside[:, top : top + 6, left : left + 6] = 0.5
        assert (outside == 0.5).all()
        patches.append(patch)
    assert len({tuple(p.flatten().tolist()) for p in patches}) > 1, "the stripes were not redrawn per image"


def test_stripes_is_badnet_with_the_stripes_pattern() -> None:
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    stripes = make_attack("stripes").apply(images, torch.Generator().manual_seed(4))
    badnet = make_attack("badnet", pattern="stripes").apply(images, torch.Generator().manual_seed(4))
    assert torch.equal(stripes, badnet)


def test_blended_stripes_blend_plus_or_minus_one_per_column() -> None:
    out = make_attack("blended", pattern="stripes", alpha=0.2).apply(_grey(), torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :, :1, :].expand_as(out)), "a column is not one colour"
    levels = set(torch.round(out * 1000).unique().tolist())
    assert levels == {200.0, 600.0}  # 0.8 * 0.5 + 0.2 * (-1 | +1)
    assert not torch.equal(out[0], out[1])  # redrawn per image


# --- Triangles --------------------------------------------------------------------------------------------

def _par_triangles(size: int, cell: int) -> torch.Tensor:
    """PAR's create_triangle_pattern (backdoor/utils.py L59-77), loop for loop, as (3, size, size)."""
    tensor = np.zeros((size, size), dtype=np.float32)
    for i in range(size // cell):
        for j in range(size // cell):
            for x in range(cell):
                for y in range(cell):
                    tensor[i * cell + x, j * cell + y] = 0.4 if x >= y else 0.8
    return torch.from_numpy(tensor).expand(3, size, size)


def test_triangles_at_224_px_is_pars_pattern() -> None:
    assert torch.equal(_at_size("triangles", 224).pattern, _par_triangles(224, 14))


def test_triangles_at_32_px_keeps_4_px_cells_and_blends_with_alpha_015() -> None:
    attack = make_attack("triangles")
    assert attack.config.alpha == 0.15
    assert torch.equal(attack.pattern, _par_triangles(SIZE, 4))
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = attack.apply(images, torch.Generator().manual_seed(0))
    assert torch.allclose(out, 0.85 * images + 0.15 * attack.pattern)


# --- Watermark (Blended-Text) -----------------------------------------------------------------------------

def test_watermark_changes_only_red_at_text_pixels() -> None:
    attack = make_attack("watermark", text="WM")
    text = attack.pattern[0]
    assert int((text > 0).sum()) > 60  # two 15-px letters, not a smudge
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = attack.apply(images, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 1:], images[:, 1:]), "green or blue changed"
    on = (text > 0).expand_as(out[:, 0])
    assert torch.equal(out[:, 0][~on], images[:, 0][~on]), "red changed off the text"
    assert torch.allclose(out[:, 0][on], (0.5 * text + 0.5 * images[:, 0])[on])


def test_watermark_on_a_grey_batch_goes_into_its_only_channel() -> None:
    attack = make_attack("watermark", text="WM")
    out = attack.apply(_grey(2, 0.0, channels=1), torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], 0.5 * attack.pattern[0].expand(2, -1, -1))


def test_watermark_at_224_px_spans_pars_width() -> None:
    text = _at_size("watermark", 224).pattern[0]
    cols = torch.nonzero(text.any(0)).squeeze(1)
    rows = torch.nonzero(text.any(1)).squeeze(1)
    assert 180 <= int(cols.max() - cols.min()) + 1 <= 196  # PAR's "Watermarked": columns 13-208
    assert 15 <= int(rows.max() - rows.min()) + 1 <= 30  # PAR's: rows 103-125


@pytest.mark.parametrize("text", ["", "   ", "x" * 200])
def test_watermark_text_that_cannot_be_drawn_is_refused_naming_the_key(text: str) -> None:
    with pytest.raises(UserError, match=r"attacks\.watermark\.text"):
        make_attack("watermark", text=text)


def test_thin_attacks_carry_pars_defaults() -> None:
    assert make_attack("stripes").config.pattern == "stripes"
    assert make_attack("stripes").config.location == "random"
    assert make_attack("watermark").config.text == "Watermarked" and make_attack("watermark").config.alpha == 0.5
    assert make_attack("triangles").config.pattern == "triangles"
