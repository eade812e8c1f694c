"""The shared training loop: seeded runs repeat bitwise, non-finite losses stop the run, CLIP's decay groups."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.batches import Normalizer, PairBatches
from benchmark.data.pairs import PairSet
from benchmark.models import create_model, tokenizer_for
from benchmark.training import NonFiniteLossError, parameter_groups, train
from benchmark.training_recipe import TrainRecipe

MODEL = "cleanbench-vit-tiny"


def _pairs() -> PairSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return PairSet(images, [f"a photo of a {word}." for word in ["bag", "coat", "shirt", "dress"] * 8],
                   torch.arange(32) % 4)


def _train_once(seed: int) -> dict[str, torch.Tensor]:
    model = create_model(MODEL, seed=seed)
    batches = PairBatches(_pairs(), tokenizer_for(MODEL), Normalizer(model), 8, torch.Generator().manual_seed(seed),
                          torch.device("cpu"))
    train(model, batches, TrainRecipe(epochs=2, batch_size=8, lr=1e-3, warmup_steps=2))
    return model.state_dict()


def test_same_seed_gives_bitwise_identical_weights():
    first, second = _train_once(3), _train_once(3)
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = _train_once(4)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_non_finite_loss_stops_the_run_with_a_clear_error():
    model = torch.nn.Linear(2, 2)
    batches = [{"x": torch.ones(4, 2)}] * 3
    nan_loss = lambda model, batch: model(batch["x"]).sum() * float("nan")  # noqa: E731
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 0"):
        train(model, batches, TrainRecipe(epochs=1, batch_size=4), loss_fn=nan_loss)


def test_weight_decay_only_on_weight_matrices():
    model = create_model(MODEL, seed=0)
    no_decay, decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all("bias" not in names[id(p)] and "ln" not in names[id(p)] for p in decay["params"])


def test_the_old_import_paths_of_batching_still_work():
    """The README's plugin example and installed plugins import batching from training and streaming_batches."""
    import benchmark.data.batches as batches
    import benchmark.data.streaming_batches as streaming
    import benchmark.training as training

    assert (training.Normalizer, training.PairBatches, training.Batch) == (Normalizer, PairBatches, batches.Batch)
    assert (streaming.pair_batches, streaming.rank_batches, streaming.to_device) == (
        batches.pair_batches, batches.rank_batches, batches.to_device)
