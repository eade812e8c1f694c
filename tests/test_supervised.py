"""Supervised finetuning: a vision encoder + linear head that the evaluation uses through its own classifier."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.metrics import BringsOwnClassifier, classifier_for, evaluate
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training_recipe import TrainRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext
from defenses.supervised import HeadClassifier

MODEL = "cleanbench-vit-tiny"
CLASSES = ["boot", "bag", "coat"]


def _labelled(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class shows as a bright band in a class-specific row block, so a few steps can learn it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = torch.randint(0, 60, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, :, label * 10 : label * 10 + 10] = 250
    return images, labels


def _context() -> DefenseContext:
    images, labels = _labelled(12, seed=1)
    recipe = TrainRecipe(epochs=3, batch_size=8, lr=1e-3, warmup_steps=1)
    return DefenseContext(torch.device("cpu"), 3, recipe, tokenizer_for(MODEL), EvalSet(images, labels, CLASSES),
                          Reporter.silent())


def _apply(labels: torch.Tensor | None = None):
    images, true_labels = _labelled(48)
    pairs = PairSet(images, [f"a photo of a {CLASSES[int(k)]}." for k in true_labels],
                    true_labels if labels is None else labels)
    return DEFENSES.get("supervised").from_settings({}).apply(create_model(MODEL, seed=0), pairs, _context())


def test_defended_model_brings_its_own_classifier_used_by_evaluate():
    model = _apply()
    assert isinstance(model, BringsOwnClassifier)
    assert not hasattr(model, "transformer")  # the text tower is dropped
    images, labels = _labelled(30, seed=2)
    test_set = EvalSet(images, labels, CLASSES)
    classifier = classifier_for(model, tokenizer_for(MODEL), test_set, torch.device("cpu"))
    assert isinstance(classifier, HeadClassifier)
    assert classifier(images.float() / 255).shape == (30, len(CLASSES))
    metrics = evaluate(classifier, test_set, target=1, trigger=lambda x, g: x.flip(-1), seed=0,
                       device=torch.device("cpu"))
    assert metrics.ca.n == 30 and metrics.asr is not None and metrics.asr.n == 20
    assert metrics.ca.value > 0.5  # the head learned the easy bands, so the evaluation really goes through it


def test_unlabelled_clean_pairs_are_refused():
    with pytest.raises(UserError, match="labelled"):
        _apply(labels=torch.full((48,), -1))


def test_eval_set_with_other_classes_is_refused():
    model = _apply()
    images, labels = _labelled(6)
    with pytest.raises(UserError, match="trained on classes"):
        model.image_classifier(EvalSet(images, labels, ["x", "y", "z"]), torch.device("cpu"))
