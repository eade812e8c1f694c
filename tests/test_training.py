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


def test_every_moved_path_in_the_deprecation_table_still_imports_with_a_warning_naming_the_new_one():
    """Plugins written against an old path (batching in training and streaming_batches, CleanCLIP's augmentation
    before it moved to the engine) keep working: the one table of moves answers them."""
    import importlib
    import re
    import sys

    from benchmark.deprecations import MOVED_MODULES, MOVED_NAMES

    for old, new in MOVED_MODULES.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=rf"^{re.escape(old)} has moved to {re.escape(new)};"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new) and module.__spec__.name == new
    for module_name, names in MOVED_NAMES.items():
        module = importlib.import_module(module_name)
        for name, target in names.items():
            new_module, _, attr = target.partition(":")
            with pytest.warns(DeprecationWarning, match=rf"^{re.escape(module_name)}\.{name} has moved to "
                                                         rf"{re.escape(new_module)}\.{attr};"):
                found = getattr(module, name)
            assert found is getattr(importlib.import_module(new_module), attr)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        importlib.import_module("benchmark.training").no_such_name
