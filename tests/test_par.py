"""PAR: the loss against a hand computation on both sides of τ, the augmentation (noise only brightens, the erased
square's size, seeding), and a short end-to-end run on the tiny model that leaves its frozen copy untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.data.batches import Normalizer
from benchmark.data.pairs import EvalSet
from benchmark.errors import UserError
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training import clip_loss
from benchmark.training_recipe import TrainRecipe
from defenses import DEFENSES, par
from defenses.base import DefenseContext
from defenses.par import PARConfig, PerturbAndNormalize, par_loss, par_objective
from tests.helpers import MODEL, TRAIN_BATCH_SIZE, make_pairs

E1, E2, MINUS_E1, MINUS_E2 = [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]
DIAGONAL = [math.sqrt(0.5), math.sqrt(0.5)]


def _hand_clip_loss(images: list[list[float]], texts: list[list[float]], scale: float) -> float:
    """CLIP's symmetric cross-entropy with explicit log-softmax over plain-float dot products."""

    def mean_ce(rows: list[list[float]], columns: list[list[float]]) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            logits = [scale * sum(a * b for a, b in zip(row, column)) for column in columns]
            total += -(logits[i] - math.log(sum(math.exp(logit) for logit in logits)))
        return total / len(rows)

    return (mean_ce(images, texts) + mean_ce(texts, images)) / 2


def _hand_distance(current: list[list[float]], original: list[list[float]]) -> float:
    return sum(sum((a - b) ** 2 for a, b in zip(x, y)) for x, y in zip(current, original)) / len(current)


# u, v: the trained model's features; u0, v0: the frozen copy's. D_img = (0 + 2 + 4) / 3 = 2 exactly;
# D_txt = (0 + (2 + √2) + (2 − √2)) / 3 = 4/3 (the diagonal against −e2, then e2 against the diagonal).
U, V = [E1, E2, MINUS_E1], [E1, DIAGONAL, E2]
U0, V0 = [E1, E1, E1], [E1, MINUS_E2, DIAGONAL]


@pytest.mark.parametrize(("threshold", "image_active", "text_active"),
                         [(2.15, True, True), (2.0, True, True), (1.99, False, True), (1.0, False, False)])
def test_loss_equals_hand_computation_on_both_sides_of_the_threshold(threshold, image_active, text_active):
    d_img, d_txt = _hand_distance(U, U0), _hand_distance(V, V0)
    assert d_img == 2.0 and 1.0 < d_txt < 1.99
    expected = _hand_clip_loss(U, V, 2.0) - 0.5 * (d_img * image_active + d_txt * text_active)
    u, v = torch.tensor(U, requires_grad=True), torch.tensor(V, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = par_objective(u, v, torch.tensor(U0), torch.tensor(V0), scale, loss_threshold=threshold,
                         perturb_weight=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert scale.grad is None  # the temperature is a constant in PAR's loss

    # The gradient: the CLIP part by autograd through an independent log-softmax, plus −½·∂D/∂u where active.
    u_ref, v_ref = torch.tensor(U, requires_grad=True), torch.tensor(V, requires_grad=True)
    logits = 2.0 * u_ref @ v_ref.T
    targets = torch.arange(3)
    reference = -(torch.log_softmax(logits, 1)[targets, targets].mean()
                  + torch.log_softmax(logits.T, 1)[targets, targets].mean()) / 2
    reference.backward()
    pull_u = -0.5 * 2 * (torch.tensor(U) - torch.tensor(U0)) / 3 * image_active
    pull_v = -0.5 * 2 * (torch.tensor(V) - torch.tensor(V0)) / 3 * text_active
    assert torch.allclose(u.grad, u_ref.grad + pull_u, atol=1e-6)
    assert torch.allclose(v.grad, v_ref.grad + pull_v, atol=1e-6)


def test_perturb_weight_scales_the_distance_term():
    args = (torch.tensor(U), torch.tensor(V), torch.tensor(U0), torch.tensor(V0), torch.tensor(2.0))
    clip = _hand_clip_loss(U, V, 2.0)
    d = _hand_distance(U, U0) + _hand_distance(V, V0)
    assert par_objective(*args, perturb_weight=0.0).item() == pytest.approx(clip, rel=1e-6)
    assert par_objective(*args, perturb_weight=3.0).item() == pytest.approx(clip - 3.0 * d, rel=1e-6)


def _batch(model: nn.Module, count: int = 8) -> dict[str, torch.Tensor]:
    pairs = make_pairs(count)
    return {"images": Normalizer(model)(pairs.images), "texts": tokenizer_for(MODEL)(pairs.captions)}


def test_on_the_tiny_model_the_logit_scale_gets_no_gradient_and_an_unmoved_model_gives_the_clip_loss():
    model = create_model(MODEL, seed=0).eval()
    batch = _batch(model)
    loss = par_loss(model, par.frozen_copy(model), batch)
    assert loss.item() == pytest.approx(clip_loss(model, batch).item(), rel=1e-5)  # D = 0 before any step
    loss.backward()
    assert model.logit_scale.grad is not None and torch.count_nonzero(model.logit_scale.grad) == 0
    assert model.visual.conv1.weight.grad.abs().sum() > 0


def test_the_distance_term_pushes_away_from_the_frozen_model():
    model = create_model(MODEL, seed=0).eval()
    frozen = par.frozen_copy(create_model(MODEL, seed=1))
    batch = _batch(model)
    with_term = par_loss(model, frozen, batch, loss_threshold=4.0)
    without = par_loss(model, frozen, batch, perturb_weight=0.0)
    assert with_term.item() < without.item()  # a positive distance, subtracted
    assert par_loss(model, frozen, batch, loss_threshold=0.0).item() == pytest.approx(without.item(), rel=1e-6)


def _augment(seed: int = 0, **settings) -> PerturbAndNormalize:
    return PerturbAndNormalize(create_model(MODEL, seed=0), PARConfig(**settings), seed)


def _unnormalise(augment: PerturbAndNormalize, images: torch.Tensor) -> torch.Tensor:
    return images * augment.std + augment.mean


def test_noise_only_brightens_and_the_output_stays_an_image():
    augment = _augment(noise_probability=1.0, erase_probability=0.0)
    images = torch.full((6, 3, 32, 32), 128, dtype=torch.uint8)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    pixels = _unnormalise(augment, out)
    assert pixels.min() >= 128 / 255 - 1e-5 and pixels.max() <= 1 + 1e-5
    assert (pixels > 128 / 255 + 1e-3).float().mean() > 0.3  # about half the draws of N(0, .2²) are positive


def test_noise_and_erasing_fire_per_image_with_their_probability():
    augment = _augment(noise_probability=0.5, erase_probability=0.0)
    images = make_pairs(64).images
    changed = (augment(images) - Normalizer(create_model(MODEL))(images)).abs().flatten(1).amax(1) > 1e-5
    assert 16 <= changed.sum() <= 48
    erased = _augment(noise_probability=0.0, erase_probability=0.5)(torch.full((64, 3, 32, 32), 255, dtype=torch.uint8))
    fired = (erased == 0).flatten(1).any(1)
    assert 16 <= fired.sum() <= 48


@pytest.mark.parametrize(("size", "sides"), [(224, range(16, 23)), (32, (2, 3))])
def test_the_erased_square_covers_half_to_one_percent_of_the_image(size: int, sides):
    augment = _augment(noise_probability=1.0, erase_probability=1.0)
    white = torch.full((24, 3, size, size), 255, dtype=torch.uint8)  # noise cannot brighten white: only erasing shows
    out = augment(white)
    assert _unnormalise(augment, out).min() >= -1e-5 and _unnormalise(augment, out).max() <= 1 + 1e-5
    for image in out:
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # every channel, value 0
        rows, cols = zero[0].any(1).nonzero().flatten(), zero[0].any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert height == width and height in sides  # a square ...
        assert zero[0].sum() == height * width and rows[-1] - rows[0] + 1 == height  # ... filled, in one piece
        if size == 224:  # at this size the rounded side keeps the area within the code's scale
            assert 0.005 <= height * width / size**2 <= 0.01


def test_the_same_seed_gives_the_same_views_and_each_batch_new_ones():
    images = make_pairs(16).images
    first, again, other = _augment(seed=3), _augment(seed=3), _augment(seed=4)
    view = first(images)
    assert torch.equal(view, again(images))
    assert not torch.equal(view, other(images))
    assert not torch.equal(first(images), view)  # the next batch draws anew


def test_config_refuses_bad_values_naming_the_key():
    for key, value in (("loss_threshold", -0.1), ("loss_threshold", 4.5), ("perturb_weight", -1.0),
                       ("noise_std", -0.2), ("noise_probability", 1.5), ("erase_probability", -0.5)):
        with pytest.raises(UserError, match=rf"defenses\.par: {key} = "):
            DEFENSES.get("par").from_settings({key: value})
    with pytest.raises(UserError, match=r"erase_scale\[1\] = 0.001 is out of range; allowed: \[0.005, 1.0\]"):
        PARConfig(erase_scale=(0.005, 0.001))
    with pytest.raises(UserError, match="erase_scale"):
        DEFENSES.get("par").from_settings({"erase_scale": [0.01]})
    assert PARConfig().loss_threshold == 2.15 and PARConfig().erase_scale == (0.005, 0.01)
    assert DEFENSES.get("par")().passes_per_pair() == pytest.approx(4 / 3)


def _context(seed: int = 5) -> DefenseContext:
    val = EvalSet(make_pairs(8, seed=1).images, torch.arange(8), [f"class {i}" for i in range(8)])
    recipe = TrainRecipe(epochs=1, batch_size=TRAIN_BATCH_SIZE, lr=1e-4, warmup_steps=1)
    return DefenseContext(torch.device("cpu"), seed, recipe, tokenizer_for(MODEL), val, Reporter.silent())


def test_apply_trains_the_model_and_leaves_the_frozen_copy_as_the_victim(monkeypatch):
    copies, original = [], par.frozen_copy

    def spy(model: nn.Module) -> nn.Module:
        copies.append(original(model))
        return copies[-1]

    monkeypatch.setattr(par, "frozen_copy", spy)
    model = create_model(MODEL, seed=0).eval()
    victim = {key: value.clone() for key, value in model.state_dict().items()}
    defended = DEFENSES.get("par").from_settings({}).apply(model, make_pairs(2 * TRAIN_BATCH_SIZE), _context())

    after = defended.state_dict()
    assert defended is model and all(p.requires_grad for p in defended.parameters())
    assert any(not torch.equal(victim[key], after[key]) for key in victim)
    assert all(torch.isfinite(value).all() for value in after.values())
    assert torch.equal(after["logit_scale"], victim["logit_scale"])  # PAR does not train the temperature
    (frozen,) = copies
    assert frozen is not model and not frozen.training
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert all(torch.equal(value, victim[key]) for key, value in frozen.state_dict().items())
