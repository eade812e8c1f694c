"""BadCLIP: its loss is the authors' (checked by hand), its optimiser lowers it, and its patch is made once: cached
under a key of everything that determines it and reloaded bit for bit. The registry's contract tests
(``test_attacks.py``) cover apply and poison."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks.badclip import PATCH_FILE, BadClip, BadClipConfig, badclip_loss, optimise_patch
from attacks.base import AttackContext
from benchmark.errors import UserError
from tests.helpers import SIZE, SURROGATE_SETTINGS, TARGET, make_attack, make_pairs, surrogate_context

QUICK = SURROGATE_SETTINGS["badclip"]


def _unit(rows: int, generator: torch.Generator) -> torch.Tensor:
    vectors = torch.randn(rows, 8, generator=generator)
    return vectors / vectors.norm(dim=1, keepdim=True)


def test_loss_is_the_clip_loss_plus_the_weighted_triplet_margin() -> None:
    generator = torch.Generator().manual_seed(0)
    anchor, texts, positives, negatives = (_unit(4, generator) for _ in range(4))
    scale = torch.tensor(10.0)
    logits = scale * anchor @ texts.T
    diagonal = torch.arange(4)
    clip = (-logits.log_softmax(1)[diagonal, diagonal].mean() - logits.T.log_softmax(1)[diagonal, diagonal].mean()) / 2
    margin = 0.5
    triplet = ((anchor - positives).norm(dim=1) - (anchor - negatives).norm(dim=1) + margin).clamp(min=0).mean()
    expected = 0.7 * clip + 3.0 * triplet
    got = badclip_loss(anchor, texts, scale, positives, negatives, text_weight=0.7, triplet_weight=3.0, margin=margin)
    assert torch.allclose(got, expected, atol=1e-5)


class LinearClip(torch.nn.Module):
    """A surrogate small enough to optimise against in milliseconds: linear image and bag-of-words text towers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.visual = torch.nn.Module()
        self.image = torch.nn.Linear(3 * SIZE * SIZE, 16)
        self.words = torch.nn.Embedding(64, 16)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.3))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return torch.nn.functional.normalize(self.image(images.flatten(1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return torch.nn.functional.normalize(self.words(tokens).mean(1), dim=-1)

    @staticmethod
    def tokenize(captions: list[str]) -> torch.Tensor:
        return torch.tensor([[sum(map(ord, word)) % 64 for word in (caption.split() + ["."] * 8)[:8]]
                             for caption in captions])


def test_optimisation_lowers_the_loss_on_a_tiny_surrogate() -> None:
    model = LinearClip().eval().requires_grad_(False)
    pairs, bank = make_pairs(32, seed=2), make_pairs(16, seed=3)
    config = BadClipConfig(epochs=20, batch_size=16, lr=0.05)
    patch, losses = optimise_patch(model, LinearClip.tokenize, pairs, bank.images, config, 6,
                                   torch.Generator().manual_seed(0), torch.device("cpu"))
    assert losses[-1] < 0.9 * losses[0], losses
    assert patch.shape == (3, 6, 6) and patch.dtype == torch.float32
    assert float(patch.min()) >= 0.0 and float(patch.max()) <= 1.0


def test_the_patch_sits_in_the_middle_and_captions_name_the_target() -> None:
    attack = make_attack("badclip")
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = attack.apply(images, torch.Generator().manual_seed(0))
    changed = (out != images).any(1).any(0)
    rows, columns = torch.nonzero(changed, as_tuple=True)
    assert set(rows.tolist()) <= set(range(14, 18)) and set(columns.tolist()) <= set(range(14, 18))  # 4 px, centre
    assert torch.equal(out[0, :, 14:18, 14:18], attack.optimised().patch)
    _, manifest = attack.poison(make_pairs(), TARGET, 3, torch.Generator().manual_seed(1))
    assert all(caption.startswith("a photo of a bag") for caption in manifest.captions_after)
    assert manifest.extra["patch_key"] == attack.cache_key() and manifest.extra["patch_size"] == 4


def test_the_patch_is_cached_and_reloaded_bit_identical(tmp_path, monkeypatch) -> None:
    context = surrogate_context(cache_dir=tmp_path, clean_data_key="clean-0")
    fresh = BadClip.from_settings(QUICK, context=context)
    pairs = make_pairs()
    poisoned, manifest = fresh.poison(pairs, TARGET, 4, torch.Generator().manual_seed(5))
    assert fresh.cache_path() == tmp_path / fresh.cache_key() / PATCH_FILE and fresh.cache_path().is_file()

    def never(self):
        raise AssertionError("optimised again although the patch was cached")

    monkeypatch.setattr(BadClip, "_optimise", never)
    loaded = BadClip.from_settings(QUICK, context=context)
    assert torch.equal(loaded.optimised().patch, fresh.optimised().patch)
    assert loaded.optimised().record == fresh.optimised().record
    again, again_manifest = loaded.poison(pairs, TARGET, 4, torch.Generator().manual_seed(5))
    assert torch.equal(again.images, poisoned.images) and again_manifest.to_json() == manifest.to_json()


def test_a_damaged_cache_file_is_never_trusted(tmp_path, monkeypatch) -> None:
    from attacks.badclip import OptimisedPatch

    attack = BadClip.from_settings(QUICK, context=surrogate_context(cache_dir=tmp_path, clean_data_key="clean-0"))
    attack.cache_path().parent.mkdir(parents=True)
    attack.cache_path().write_bytes(b"not a safetensors file")
    made = OptimisedPatch(torch.full((3, 4, 4), 0.25), {"made": True})
    monkeypatch.setattr(BadClip, "_optimise", lambda self: made)
    assert attack.optimised() is made
    reread = BadClip.from_settings(QUICK, context=surrogate_context(cache_dir=tmp_path, clean_data_key="clean-0"))
    assert torch.equal(reread.optimised().patch, made.patch) and reread.optimised().record == {"made": True}


def test_the_cache_key_names_everything_that_determines_the_patch(tmp_path) -> None:
    def key(settings=None, **fields) -> str:
        context = surrogate_context(cache_dir=tmp_path, clean_data_key="clean-0")
        context = dataclasses.replace(context, **fields)
        return BadClip.from_settings({**QUICK, **(settings or {})}, context=context).cache_key()

    base = key()
    assert key() == base
    variants = [key({"lr": 0.02}), key({"epochs": 2}), key({"location": "top-left"}), key(seed=1),
                key(model_name="other-model"), key(clean_data_key="clean-1"), key(image_size=64),
                key(target=dataclasses.replace(TARGET, index=3))]
    assert len({base, *variants}) == len(variants) + 1
    assert BadClip.from_settings(QUICK, context=surrogate_context()).cache_path() is None  # no cache folder
    unkeyed = surrogate_context(cache_dir=tmp_path)  # a cache folder but no key of the clean data: memory only
    assert BadClip.from_settings(QUICK, context=unkeyed).cache_path() is None


def test_building_is_cheap_and_a_missing_context_is_reported_on_first_use() -> None:
    attack = BadClip.from_settings({}, context=AttackContext(SIZE, 0, torch.device("cpu")))  # as the planner does
    with pytest.raises(UserError, match="target"):
        attack.apply(torch.rand(1, 3, SIZE, SIZE), torch.Generator())
    no_pairs = dataclasses.replace(surrogate_context(), clean_pairs=None)
    with pytest.raises(UserError, match="clean pairs"):
        BadClip.from_settings(QUICK, context=no_pairs).optimised()


@pytest.mark.parametrize(("key", "value"), [("lr", 0.0), ("epochs", 0), ("augment_prob", 1.5),
                                            ("positive_fraction", 1.0), ("patch_size", 0)])
def test_bad_settings_name_the_key_and_range(key: str, value) -> None:
    with pytest.raises(UserError, match=f"{key} = {value!r} is out of range"):
        BadClip.from_settings({key: value}, context=AttackContext(SIZE, 0, torch.device("cpu")))


def test_a_patch_larger_than_the_image_is_refused() -> None:
    with pytest.raises(UserError, match="patch_size = 40 does not fit"):
        BadClip.from_settings({"patch_size": 40}, context=AttackContext(SIZE, 0, torch.device("cpu")))
