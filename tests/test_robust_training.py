"""The training-stage defenses RoCLIP and SafeCLIP: the caption pool and its loss, the GMM split into safe and
risky pairs, each against hand-computed cases, and a tiny end-to-end ``train`` of each (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training_recipe import VictimRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext
from defenses.roclip import FeaturePool, RoCLIPConfig, nearest_caption_loss
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


# End to end ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "settings", "epochs", "other_seed"), [
    ("roclip", {"num_workers": 0, "break_epoch": 1}, 1, True),  # a RoCLIP epoch of two steps
    ("roclip", {"cross_aug": False, "break_epoch": 1}, 1, False),
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
