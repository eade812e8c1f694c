"""CleanCLIP and its SSL-only ablation: the loss against hand-computed values, λ2 = 0 against plain finetuning,
the augmented-view data path, and short end-to-end runs on random pairs (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.augment.text import EDA, default_wordnet
from benchmark.augment.views import AugmentedPairBatches, AugmentedViews
from benchmark.data.batches import Normalizer
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training import clip_loss, clip_ssl_loss
from benchmark.training_recipe import TrainRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext
from defenses.cleanclip import CleanCLIPConfig
from defenses.ssl_only import SSLOnlyConfig

MODEL = "cleanbench-vit-tiny"
CLASSES = ["boot", "bag", "coat", "dress"]


class FixedFeatures(nn.Module):
    """A stand-in CLIP whose "encoders" only L2-normalise their inputs, so every logit can be worked out by hand."""

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_features": F.normalize(images.float(), dim=-1),
                "text_features": F.normalize(texts.float(), dim=-1), "logit_scale": torch.tensor(2.0)}


def _hand_loss(clip_weight: float, inmodal_weight: float) -> float:
    """The 3-sample loss of ``test_loss_equals_hand_computed_value`` written out with plain floats."""
    s = 2.0

    def mean_ce(dots: list[list[float]]) -> float:  # cross-entropy with the diagonal as target, batch mean
        return sum(-s * row[i] + math.log(sum(math.exp(s * d) for d in row)) for i, row in enumerate(dots)) / 3

    # I = (e1, e2, -e1), T = (e1, e1, e2), Ĩ = (e1, e2, e2), T̃ = (e2, e1, -e2): the dot products, by hand.
    i_t = [[1, 1, 0], [0, 0, 1], [-1, -1, 0]]
    t_i = [[1, 0, -1], [1, 0, -1], [0, 1, 0]]
    i_iaug = [[1, 0, 0], [0, 1, 1], [-1, 0, 0]]
    t_taug = [[0, 1, 0], [0, 1, 0], [1, 0, -1]]
    return clip_weight * (mean_ce(i_t) + mean_ce(t_i)) / 2 + inmodal_weight * (mean_ce(i_iaug) + mean_ce(t_taug)) / 2


@pytest.mark.parametrize(("clip_weight", "inmodal_weight", "expected"),
                         [(1.0, 1.0, 2.690322418311591), (0.5, 3.0, 4.836333408541037), (0.0, 1.0, 1.3964688797540967)])
def test_loss_equals_hand_computed_value(clip_weight: float, inmodal_weight: float, expected: float):
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    batch = {"images": torch.tensor([e1, e2, [-1.0, 0.0]]), "texts": torch.tensor([e1, e1, e2]),
             "augmented_images": torch.tensor([e1, e2, e2]), "augmented_texts": torch.tensor([e2, e1, [0.0, -1.0]])}
    loss = clip_ssl_loss(FixedFeatures(), batch, clip_weight, inmodal_weight)
    assert loss.item() == pytest.approx(_hand_loss(clip_weight, inmodal_weight), rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _pairs(n: int = 24, seed: int = 0) -> PairSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=generator)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return PairSet(images, [f"a blurry photo of a {CLASSES[int(label)]}." for label in labels], labels)


def _model() -> nn.Module:
    return create_model(MODEL, seed=0)


def test_without_the_ssl_term_the_loss_is_exactly_the_finetune_loss():
    model, pairs = _model(), _pairs(6)
    images = Normalizer(model)(pairs.images)
    texts = tokenizer_for(MODEL)(pairs.captions)
    batch = {"images": images, "texts": texts, "augmented_images": images.flip(-1), "augmented_texts": texts.flip(0)}
    assert torch.equal(clip_ssl_loss(model, batch, 1.0, 0.0), clip_loss(model, batch))


def test_one_forward_pass_of_2n_matches_separate_passes():
    model, pairs = _model().eval(), _pairs(6)
    tokenize, normalize = tokenizer_for(MODEL), Normalizer(model)
    batch = {"images": normalize(pairs.images), "texts": tokenize(pairs.captions),
             "augmented_images": normalize(pairs.images.flip(-1)), "augmented_texts": tokenize(pairs.captions[::-1])}
    original = model(batch["images"], batch["texts"])
    augmented = model(batch["augmented_images"], batch["augmented_texts"])
    scale = original["logit_scale"]
    targets = torch.arange(6)
    ssl = (F.cross_entropy(scale * original["image_features"] @ augmented["image_features"].T, targets)
           + F.cross_entropy(scale * original["text_features"] @ augmented["text_features"].T, targets)) / 2
    expected = clip_loss(model, batch) + 2.0 * ssl
    torch.testing.assert_close(clip_ssl_loss(model, batch, 1.0, 2.0), expected, rtol=1e-5, atol=1e-5)


def test_autoaugment_touches_only_the_augmented_view():
    pairs = _pairs(16)
    views = AugmentedViews(pairs.images)
    torch.manual_seed(0)
    changed = 0
    for index in range(len(views)):
        returned_index, original, augmented = views[index]
        assert returned_index == index and torch.equal(original, pairs.images[index])
        assert augmented.shape == original.shape and augmented.dtype == torch.uint8
        changed += not torch.equal(augmented, original)
    assert changed >= 4  # AutoAugment's ImageNet policy changes most images


def _batches(pairs: PairSet, model: nn.Module, redraw: bool) -> AugmentedPairBatches:
    return AugmentedPairBatches(pairs, tokenizer_for(MODEL), Normalizer(model), 8, seed=1,
                                device=torch.device("cpu"), eda=EDA(0.3, default_wordnet()), redraw_text=redraw,
                                num_workers=0)


def test_batches_keep_originals_and_captions_paired_and_untouched():
    model, pairs = _model(), _pairs(16)
    normalize, tokens = Normalizer(model), tokenizer_for(MODEL)(pairs.captions)
    batches = _batches(pairs, model, redraw=False)
    assert len(batches) == 2
    for batch in batches:
        for image, text in zip(batch["images"], batch["texts"]):
            matches = [i for i in range(len(pairs)) if torch.equal(normalize(pairs.images[i : i + 1])[0], image)]
            assert len(matches) == 1 and torch.equal(tokens[matches[0]], text)
        assert not torch.equal(batch["images"], batch["augmented_images"])
        assert not torch.equal(batch["texts"], batch["augmented_texts"])


@pytest.mark.parametrize("redraw", [False, True])
def test_eda_captions_are_fixed_unless_redrawn_each_epoch(redraw: bool):
    batches = _batches(_pairs(16), _model(), redraw=redraw)
    list(batches)
    first = batches.augmented_tokens.clone()
    list(batches)
    assert torch.equal(first, batches.augmented_tokens) is not redraw


def _context(seed: int = 5) -> DefenseContext:
    val = EvalSet(_pairs(8, seed=1).images, torch.arange(8) % len(CLASSES), CLASSES)
    recipe = TrainRecipe(epochs=1, batch_size=8, lr=1e-4, warmup_steps=1)
    return DefenseContext(torch.device("cpu"), seed, recipe, tokenizer_for(MODEL), val, Reporter.silent())


@pytest.mark.parametrize(("name", "settings"), [("cleanclip", {"num_workers": 0}), ("ssl-only", {"num_workers": 0}),
                                                ("cleanclip", {"num_workers": 1, "redraw_text_each_epoch": True})])
def test_defense_trains_the_model(name: str, settings: dict):
    model = _model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    defended = DEFENSES.get(name).from_settings(settings).apply(model, _pairs(), _context())
    after = defended.state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    assert all(torch.isfinite(value).all() for value in after.values())


def test_cleanclip_without_ssl_term_is_finetune_end_to_end():
    pairs, context = _pairs(), _context()
    finetuned = DEFENSES.get("finetune").from_settings({}).apply(_model(), pairs, context)
    cleaned = DEFENSES.get("cleanclip").from_settings({"inmodal_weight": 0.0}).apply(_model(), pairs, context)
    for key, value in finetuned.state_dict().items():
        assert torch.equal(value, cleaned.state_dict()[key]), key


def test_configs_refuse_bad_weights_and_record_the_tuning_protocol():
    with pytest.raises(UserError, match="both 0"):
        CleanCLIPConfig(clip_weight=0.0, inmodal_weight=0.0)
    with pytest.raises(UserError, match="inmodal_weight"):
        DEFENSES.get("cleanclip").from_settings({"inmodal_weight": -1.0})
    with pytest.raises(UserError, match="clip_weight"):
        SSLOnlyConfig(clip_weight=1.0)
    assert SSLOnlyConfig().clip_weight == 0.0 and SSLOnlyConfig().inmodal_weight == 1.0
    assert CleanCLIPConfig().tuning == "fixed-in-preset"
