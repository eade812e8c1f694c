"""The training-stage defenses RoCLIP and SafeCLIP: the caption pool and its loss, the GMM split into safe and
risky pairs, each against hand-computed cases, and a tiny end-to-end ``train`` of each (CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.augment.text import EDA
from benchmark.data.batches import Normalizer
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training_recipe import VictimRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext
from defenses.roclip import FeaturePool, RoCLIPConfig, nearest_caption_loss
from defenses.safeclip import (
    FilteredEpochs,
    Mixture1D,
    SafeCLIPConfig,
    SafeSplit,
    TwoViews,
    clean_probabilities,
    cross_view_clip_loss,
    fit_mixture,
    inmodal_loss,
    two_means_upper,
)
from tests.helpers import MODEL, TRAIN_BATCH_SIZE, learnable_pairs

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def _pool(rows: list[list[float]]) -> FeaturePool:
    """A pool holding exactly ``rows`` (its size), its pointer back at 0."""
    pool = FeaturePool(len(rows), seed=0)
    pool.enqueue(torch.tensor(rows))
    assert pool.ptr == 0 and torch.equal(pool.bank, torch.tensor(rows))
    return pool


def _text_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if not name.startswith("visual.") and name != "logit_scale"}


def _pairs() -> PairSet:
    """32 of the learnable pairs (4 of each of 8 classes): two batches of 16."""
    return learnable_pairs().subset(torch.arange(32))


def _context(epochs: int, seed: int = 3) -> DefenseContext:
    pairs = _pairs()
    recipe = VictimRecipe(epochs=epochs, batch_size=TRAIN_BATCH_SIZE, lr=1e-3, warmup_steps=1)
    val = EvalSet(pairs.images[:8], pairs.labels[:8], ["bag", "coat", "shirt", "dress", "sandal", "sneaker",
                                                        "trousers", "pullover"])
    return DefenseContext(torch.device("cpu"), seed, recipe, tokenizer_for(MODEL), val, Reporter.silent())


def _train(name: str, settings: dict, epochs: int, seed: int = 3) -> tuple[nn.Module, nn.Module]:
    """(the initial model, the model ``name`` trained on the learnable pairs), seeded as the runner seeds it."""
    initial, model = create_model(MODEL, seed=0), create_model(MODEL, seed=0)
    context = _context(epochs, seed)
    torch.manual_seed(context.seed)
    return initial, DEFENSES.get(name).from_settings(settings).train(model, _pairs(), context)


# RoCLIP: the caption pool ------------------------------------------------------------------------------------------


def test_nearest_entry_is_the_most_cosine_similar_one_returned_as_stored():
    pool = _pool([E1, E2, [-1.0, 0.0], [0.6, -0.8]])
    queries = torch.tensor([[2.0, 1.0], [0.1, 3.0], [-1.0, -0.5], [1.0, -2.0]])
    # cosines of query 0: 0.894, 0.447, -0.894, 0.179; query 3: 0.447, -0.894, -0.447, 0.984 (by hand)
    expected = torch.tensor([E1, E2, [-1.0, 0.0], [0.6, -0.8]])
    assert torch.equal(pool.nearest(queries), expected)
    assert not pool.nearest(queries.requires_grad_()).requires_grad


def test_lookup_sees_the_pool_before_the_batch_is_enqueued():
    pool = _pool([E1, E2, [-1.0, 0.0]])
    batch = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    neighbours = pool.nearest_then_enqueue(batch, batch)  # each query's own vector is being enqueued
    assert torch.equal(neighbours, torch.tensor([E2, E1]))  # matched among the old entries only
    assert torch.equal(pool.bank, torch.tensor([[0.6, 0.8], [0.8, -0.6], [-1.0, 0.0]]))  # then enqueued
    assert torch.equal(pool.nearest(batch), batch)  # the next batch sees them


def test_enqueue_is_fifo_and_wraps_as_lightly_does():
    pool = _pool([[0.0, float(i)] for i in range(5)])
    rows = lambda *values: torch.tensor([[v, 0.0] for v in values])
    pool.enqueue(rows(1, 2, 3))
    assert pool.ptr == 3 and torch.equal(pool.bank[:3], rows(1, 2, 3))
    pool.enqueue(rows(4, 5, 6))  # ptr + 3 >= 5: the first two fill rows 3-4, the third is dropped, ptr → 0
    assert pool.ptr == 0 and torch.equal(pool.bank, rows(1, 2, 3, 4, 5))
    pool.enqueue(rows(7))
    assert pool.ptr == 1 and torch.equal(pool.bank, rows(7, 2, 3, 4, 5))
    pool.enqueue(rows(8, 9, 10, 11))  # exactly reaching the end wraps too (lightly's >=)
    assert pool.ptr == 0 and torch.equal(pool.bank, rows(7, 8, 9, 10, 11))


def test_the_pool_starts_as_seeded_random_unit_vectors():
    like = torch.zeros(2, 8)
    first, again, other = (FeaturePool(50, seed).entries(like) for seed in (1, 1, 2))
    assert first.shape == (50, 8)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(50))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(UserError, match="size = 0"):
        FeaturePool(0, seed=1)


def test_nearest_caption_loss_equals_hand_computed_value():
    pool = _pool([E1, E2, [-1.0, 0.0]])
    images = torch.tensor([[0.6, 0.8], [0.8, -0.6]])  # nearest captions: e2 (0.8 > 0.6), e1 (0.8 > -0.6)
    texts = torch.tensor([[0.0, -1.0], [-0.6, 0.8]])  # only enqueued: they change nothing in this loss
    loss = nearest_caption_loss(images, texts, torch.tensor(2.0), pool)
    # M = s·t̂·zᵀ = 2·[[0.8, -0.6], [0.6, 0.8]]; CE(M, y) and CE(Mᵀ, y) happen to be equal here
    row = lambda own, other: -own + math.log(math.exp(own) + math.exp(other))
    ce_m = (row(1.6, -1.2) + row(1.6, 1.2)) / 2
    ce_mt = (row(1.6, 1.2) + row(1.6, -1.2)) / 2
    assert loss.item() == pytest.approx((ce_m + ce_mt) / 2, rel=1e-6)
    assert torch.equal(pool.bank[:2], texts) and pool.ptr == 2


def test_the_text_tower_gets_no_gradient_in_roclip_epochs_only(monkeypatch):
    """The loss ``train`` hands the engine, on a real batch: epoch 1 is CLIP, epoch 2 (break_epoch 2) RoCLIP."""
    from defenses import roclip

    captured = {}
    monkeypatch.setattr(roclip, "train", lambda model, batches, recipe, *, loss_fn, **_: captured.update(
        batches=batches, loss_fn=loss_fn))
    model = create_model(MODEL, seed=0)
    DEFENSES.get("roclip").from_settings({"num_workers": 0}).train(model, _pairs(), _context(2))
    batches, loss_fn = captured["batches"], captured["loss_fn"]
    for epoch, text_learns in ((1, True), (2, False), (3, True)):
        batch = next(iter(batches))
        assert batches.epoch == epoch
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        text = [p.grad for p in _text_parameters(model).values()]
        assert all(g is not None for g in text)  # in the graph: AdamW and DDP treat the tower as the code does
        assert any(g.abs().sum() > 0 for g in text) is text_learns, epoch
        assert model.visual.proj.grad.abs().sum() > 0


def test_pool_size_is_scaled_to_the_training_set_unless_set():
    assert RoCLIPConfig().pool_entries(20_000, 128) == 400
    assert RoCLIPConfig().pool_entries(512, 128) == 128  # at least one batch
    assert RoCLIPConfig(pool_size=21_845).pool_entries(20_000, 128) == 21_845
    with pytest.raises(UserError, match=r"defenses\.roclip: break_epoch = 0 is out of range"):
        DEFENSES.get("roclip").from_settings({"break_epoch": 0})
    with pytest.raises(UserError, match="pool_fraction"):
        RoCLIPConfig(pool_fraction=0.0)


# SafeCLIP: the schedule, the mixture and the split ----------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "phases"), [(32, (5, 1, 26)), (5, (1, 1, 3)), (64, (10, 2, 52)), (3, (1, 1, 1)),
                                                (2, (1, 0, 1)), (1, (0, 0, 1))])
def test_the_code_s_32_epochs_are_scaled_to_the_victim_s(epochs: int, phases: tuple[int, int, int]):
    assert SafeCLIPConfig().phases(epochs) == phases


def test_warm_ups_can_be_set_but_must_leave_a_filtered_epoch():
    assert SafeCLIPConfig(inmodal_warmup=2, multimodal_warmup=0).phases(5) == (2, 0, 3)
    assert SafeCLIPConfig(inmodal_warmup=3).phases(5) == (3, 1, 1)
    assert SafeCLIPConfig(inmodal_warmup=4).phases(5) == (4, 0, 1)  # the unset CLIP warm-up gives way
    with pytest.raises(UserError, match="leave no filtered epoch"):
        SafeCLIPConfig(inmodal_warmup=4, multimodal_warmup=1).phases(5)
    with pytest.raises(UserError, match=r"defenses\.safeclip: cap_filter_ratio = 1\.5 is out of range"):
        DEFENSES.get("safeclip").from_settings({"cap_filter_ratio": 1.5})


def test_mixture_posterior_equals_a_direct_computation():
    mixture = Mixture1D(np.array([0.3, 0.7]), np.array([0.5, 0.1]), np.array([0.04, 0.01]))
    values = [0.1, 0.3, 0.5, 0.9]

    def density(x: float, mean: float, variance: float) -> float:
        return math.exp(-((x - mean) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)

    for x, got in zip(values, mixture.high_posterior(np.array(values))):
        high, low = 0.3 * density(x, 0.5, 0.04), 0.7 * density(x, 0.1, 0.01)
        assert got == pytest.approx(high / (high + low), rel=1e-12)  # the larger mean's component, listed first


def test_em_recovers_two_well_separated_groups():
    low, high = np.linspace(0.05, 0.15, 70), np.linspace(0.55, 0.65, 30)
    values = np.concatenate([high[:10], low, high[10:]])
    mixture = fit_mixture(values)
    order = np.argsort(mixture.means)
    np.testing.assert_allclose(mixture.weights[order], [0.7, 0.3], rtol=1e-9)
    np.testing.assert_allclose(mixture.means[order], [0.1, 0.6], rtol=1e-9)
    np.testing.assert_allclose(mixture.variances[order], [low.var() + 1e-6, high.var() + 1e-6], rtol=1e-6)
    p = clean_probabilities(values)
    assert (p[:10] > 1 - 1e-9).all() and (p[80:] > 1 - 1e-9).all() and (p[10:80] < 1e-9).all()


def test_em_matches_scikit_learn_on_overlapping_groups():
    """Values recorded from scikit-learn 1.9.1's ``GaussianMixture(n_components=2, random_state=0)`` on these 20
    similarities (its k-means start is the 2-means split here; EM moves the means from 0.1223/0.3414 in 7 steps)."""
    values = np.array([0.02, 0.05, 0.07, 0.08, 0.10, 0.11, 0.12, 0.13, 0.15, 0.16, 0.18, 0.20, 0.22, 0.25, 0.31, 0.33,
                       0.35, 0.36, 0.38, 0.41])
    mixture = fit_mixture(values)
    order = np.argsort(mixture.means)
    np.testing.assert_allclose(mixture.weights[order], [0.7037481768819801, 0.29625182311801984], rtol=1e-10)
    np.testing.assert_allclose(mixture.means[order], [0.1325402421917356, 0.3568755968531255], rtol=1e-10)
    np.testing.assert_allclose(mixture.variances[order], [0.004284773194733562, 0.0010876717711579755], rtol=1e-10)
    np.testing.assert_allclose(clean_probabilities(values)[12:], [
        0.0003707940057598224, 0.021445477445858587, 0.9230885014149275, 0.9826751866207146, 0.9951155580557803,
        0.9971376182879184, 0.9987952689297309, 0.9994507314752381], rtol=1e-9)


def test_em_on_symmetric_values_is_symmetric_and_degenerate_values_say_nothing():
    mixture = fit_mixture(np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(mixture.weights, [0.5, 0.5])
    np.testing.assert_allclose(mixture.means, [-mixture.means[1], mixture.means[1]])
    np.testing.assert_allclose(mixture.variances[0], mixture.variances[1])
    assert mixture.high_posterior(np.array([0.0]))[0] == pytest.approx(0.5)
    assert fit_mixture(np.full(5, 0.3)) is None and (clean_probabilities(np.full(5, 0.3)) == 0.5).all()


def test_two_means_is_the_best_threshold_and_never_splits_equal_values():
    assert two_means_upper(np.array([11.0, 0.0, 10.0, 2.0, 1.0])).tolist() == [True, False, True, False, False]
    assert two_means_upper(np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])).tolist() == [True, False, True, False, True,
                                                                                   True]
    assert two_means_upper(np.array([4.0, 4.0])) is None


def test_first_split_is_p_at_least_the_threshold_and_sets_the_ratio():
    split = SafeSplit(0.9, 0.01, 0.85)
    p = np.array([0.2, 0.95, 0.5, 0.99, 0.9, 0.1])
    safe, risky = split.select(p, np.zeros(6))
    assert safe.tolist() == [3, 1, 4] and risky.tolist() == [2, 0, 5]  # ranked by p
    assert split.ratio == pytest.approx(0.51)


def test_later_splits_take_the_top_floor_rn_with_r_growing_to_the_cap():
    """Two well-separated groups: the first split is exactly the high group (30 of 100), then r grows by 0.01 a
    split up to the cap (0.34 here), each split adding the next most similar pair of the low group."""
    generator = np.random.default_rng(0)
    similarities = np.concatenate([np.linspace(0.55, 0.65, 30), np.linspace(0.05, 0.15, 70)])
    positions = generator.permutation(100)
    shuffled = np.empty(100)
    shuffled[positions] = similarities
    high = set(positions[:30].tolist())
    low_by_similarity = positions[30:][::-1].tolist()  # the low group, most similar first
    split = SafeSplit(0.9, 0.01, 0.34)
    counts = []
    for expected_ratio in (0.31, 0.32, 0.33, 0.34, 0.34, 0.34):
        safe, risky = split.select(clean_probabilities(shuffled), shuffled)
        counts.append(len(safe))
        assert set(safe.tolist()) == high | set(low_by_similarity[: len(safe) - 30])
        assert sorted(safe.tolist() + risky.tolist()) == list(range(100))
        assert split.ratio == pytest.approx(expected_ratio)
    assert counts == [30, 31, 32, 33, 34, 34]
    split.ratio = 0.31
    assert len(split.select(np.ones(150), np.arange(150.0))[0]) == 46  # ⌊0.31 · 150⌋; ties: most similar first
    split.ratio = 0.02
    assert split.select(np.ones(150), np.arange(150.0))[0].tolist() == [149, 148, 147]


class FixedFeatures(nn.Module):
    """A stand-in CLIP whose encoders only L2-normalise their inputs, so every logit can be worked out by hand."""

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_features": F.normalize(images.float(), dim=-1),
                "text_features": F.normalize(texts.float(), dim=-1), "logit_scale": torch.tensor(2.0)}


def _views_batch() -> dict[str, torch.Tensor]:
    """View 2 (the originals) and view 1 (augmented) of three pairs, already unit vectors."""
    return {"images": torch.tensor([E1, E2, [0.6, 0.8]]), "texts": torch.tensor([E2, [0.8, 0.6], E1]),
            "augmented_images": torch.tensor([[0.8, 0.6], E2, E1]), "augmented_texts": torch.tensor([E2, E1, E1])}


def _mean_ce(logits: list[list[float]]) -> float:
    """Cross-entropy with the diagonal as target, batch mean, in plain floats."""
    return sum(-row[i] + math.log(sum(math.exp(v) for v in row)) for i, row in enumerate(logits)) / len(logits)


def _logits(rows: torch.Tensor, columns: torch.Tensor) -> list[list[float]]:
    return (2.0 * rows @ columns.T).tolist()


def test_safeclip_losses_equal_the_code_s_formulas_with_view_1_augmented():
    b = _views_batch()
    z2, t2, z1, t1 = b["images"], b["texts"], b["augmented_images"], b["augmented_texts"]
    inmodal = (_mean_ce(_logits(z2, z1)) + _mean_ce(_logits(t2, t1))) / 2  # ½[CE(s·Z²Z¹ᵀ) + CE(s·T²T¹ᵀ)]
    clip = (_mean_ce(_logits(z1, t2)) + _mean_ce(_logits(t1, z2))) / 2  # ½[CE(s·Z¹T²ᵀ) + CE(s·T¹Z²ᵀ)]
    assert inmodal_loss(FixedFeatures(), b).item() == pytest.approx(inmodal, rel=1e-6)
    assert cross_view_clip_loss(FixedFeatures(), b).item() == pytest.approx(clip, rel=1e-6)
    assert abs(inmodal - clip) > 0.1  # the two formulas differ on this batch


def test_inmodal_loss_with_memory_banks_uses_view_1_s_neighbours_then_enqueues_it():
    b = _views_batch()
    banks = (_pool([E1, [-1.0, 0.0], [0.0, -1.0]]), _pool([E2, [0.0, -1.0], [-1.0, 0.0]]))
    image_nn = torch.tensor([E1, E1, E1])  # view 1's images (0.8, 0.6), e2, e1: nearest e1 (e2 ties e1 at 0: first)
    text_nn = torch.tensor([E2, E2, E2])  # view 1's texts e2, e1, e1: nearest e2 (e1 ties e2 at 0: first)
    expected = (_mean_ce(_logits(b["images"], image_nn)) + _mean_ce(_logits(b["texts"], text_nn))) / 2
    assert inmodal_loss(FixedFeatures(), b, banks).item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(banks[0].bank, b["augmented_images"]) and torch.equal(banks[1].bank, b["augmented_texts"])


def test_filtered_epoch_trains_the_risky_pairs_in_modal_then_the_safe_pairs_with_clip(monkeypatch):
    model, pairs = create_model(MODEL, seed=0), _pairs()
    views = TwoViews(pairs, tokenizer_for(MODEL), Normalizer(model), 4, seed=0, device=torch.device("cpu"),
                     eda=EDA.with_default_wordnet(), num_workers=0)
    similarities = torch.full((32,), 0.1) + torch.arange(32) * 1e-3
    safe = torch.tensor([3, 5, 8, 13, 14, 17, 21, 22, 26, 28, 30, 31])
    similarities[safe] += 0.5
    monkeypatch.setattr(views, "similarities", lambda *args: similarities)
    lines = []
    epochs = FilteredEpochs(model, views, SafeSplit(0.9, 0.01, 0.85), cross_inmodal=True, augmented_scores=True,
                            seed=0, log=lines.append)
    seen = {"inmodal": [], "clip": []}
    for batch in epochs:
        seen[epochs.phase].append(batch["index"])
        assert set(batch) >= {"images", "augmented_images", "texts", "augmented_texts"}
    assert sorted(torch.cat(seen["clip"]).tolist()) == safe.tolist() and len(seen["clip"]) == 3
    assert sorted(torch.cat(seen["inmodal"]).tolist()) == sorted(set(range(32)) - set(safe.tolist()))
    assert epochs.history == [(12, 32)] and len(epochs) == 8 and "12 safe pairs of 32" in lines[0]


def test_the_three_phases_reach_the_engine_with_their_recipes_and_losses(monkeypatch):
    from defenses import safeclip

    runs = []
    monkeypatch.setattr(safeclip, "train", lambda model, batches, recipe, *, loss_fn, **_: runs.append(
        (batches, recipe, loss_fn)))
    model = create_model(MODEL, seed=0)
    context = _context(5)
    DEFENSES.get("safeclip").from_settings({"num_workers": 0}).train(model, _pairs(), context)
    (warm, warm_recipe, warm_loss), (_, clip_recipe, clip_loss), (filtered, last_recipe, filtered_loss) = runs
    assert (warm_recipe.epochs, warm_recipe.lr, warm_recipe.warmup_steps) == (1, 1e-3, 1)
    assert (clip_recipe.epochs, clip_recipe.lr, clip_recipe.warmup_steps) == (1, pytest.approx(1e-5), 0)
    assert (last_recipe.epochs, last_recipe.lr, last_recipe.warmup_steps) == (3, 1e-3, 0)
    assert len(warm) == 2 and len(filtered) == 2  # 32 pairs in batches of 16
    batch = next(iter(warm))
    with torch.no_grad():
        inmodal, clip = inmodal_loss(model, batch), cross_view_clip_loss(model, batch)
        assert warm_loss(model, batch) == inmodal and clip_loss(model, batch) == clip and inmodal != clip
        filtered.phase = "inmodal"
        assert filtered_loss(model, batch) == inmodal
        filtered.phase = "clip"
        assert filtered_loss(model, batch) == clip


# End to end ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "settings", "epochs", "other_seed"), [
    ("roclip", {"num_workers": 0, "break_epoch": 1}, 1, True),  # a RoCLIP epoch of two steps
    ("roclip", {"cross_aug": False, "break_epoch": 1}, 1, False),
    ("safeclip", {"num_workers": 0}, 3, False),  # 1 in-modal warm-up, 1 CLIP warm-up, 1 filtered epoch
    ("safeclip", {"cross_aug": False, "memory_bank_size": 8, "score_view": "original"}, 1, True),
])
def test_train_changes_the_model_and_is_deterministic(name: str, settings: dict, epochs: int, other_seed: bool):
    initial, first = _train(name, settings, epochs)
    _, second = _train(name, settings, epochs)
    before, after, again = initial.state_dict(), first.state_dict(), second.state_dict()
    assert all(torch.isfinite(value).all() for value in after.values())
    assert not torch.equal(before["visual.proj"], after["visual.proj"])
    assert all(torch.equal(after[key], again[key]) for key in after)
    if other_seed:  # the seed is what makes it deterministic, not a constant
        assert not torch.equal(after["visual.proj"], _train(name, settings, epochs, seed=4)[1].state_dict()["visual.proj"])
