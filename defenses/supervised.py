"""Supervised finetuning ("SuFi"), the CleanCLIP paper's strongest baseline (reference §4): a new linear head on
the image embedding, and the whole vision encoder finetuned with cross-entropy on labelled clean images.

The defended model is the vision encoder plus its head; it brings its own classifier
(:class:`benchmark.metrics.BringsOwnClassifier`), so CA and ASR are measured through the head, not zero-shot,
as ``src/evaluate.py::get_finetune_metrics`` does. The text tower is not used and is dropped.

Departures from the official code:
- Data: the preset's clean pairs with their class labels (the same images every other defense gets), not a
  50K-image ImageNet training subset.
- Recipe: the preset's ``[finetune]`` recipe shared by every defense (epochs, batch size, LR, weight decay 0.1
  on weight matrices only, cosine with warmup), not ``--linear_probe_num_epochs`` 10, batch 80, lr 1e-4 and
  weight decay 0.01; the head's classes are the preset's class names.
- The head's initialisation is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.batches import Batch, Normalizer
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from benchmark.training import train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext, check_recipe_overrides


@dataclass(frozen=True)
class SupervisedConfig:
    """Unset (None) fields take the preset's ``[finetune]`` recipe. ``tuning`` records how they were chosen."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    tuning: Literal["fixed-in-preset"] = "fixed-in-preset"

    def __post_init__(self) -> None:
        check_recipe_overrides(self)


class LinearProbeModel(nn.Module):
    """A CLIP vision encoder with a linear classification head over ``classnames``."""

    def __init__(self, visual: nn.Module, embed_dim: int, classnames: list[str], generator: torch.Generator) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, len(classnames))
        bound = embed_dim ** -0.5  # nn.Linear's default init, drawn from a seeded generator
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.uniform_(-bound, bound, generator=generator)
        self.classnames = list(classnames)
        self.normalize = Normalizer(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images (the CLIP preprocessing already applied)."""
        return self.head(self.visual(images))

    def image_classifier(self, eval_set: EvalSet, device: torch.device) -> "HeadClassifier":
        """The head as the evaluation's classifier; the eval set must use the classes the head was trained on."""
        if list(eval_set.classnames) != self.classnames:
            raise UserError(f"the supervised head was trained on classes {self.classnames}, but the evaluation set "
                            f"has {list(eval_set.classnames)}")
        return HeadClassifier(self.to(device).eval())


class HeadClassifier:
    """Float images in [0, 1] to the head's logits."""

    def __init__(self, model: LinearProbeModel) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.model.normalize(images))


class LabelledBatches:
    """Shuffled mini-batches of normalised images and their labels (drop_last, like the pair batches)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer, batch_size: int,
                 generator: torch.Generator, device: torch.device) -> None:
        self.images, self.labels = images, labels
        self.normalize = normalizer
        self.batch_size = min(batch_size, len(labels))
        self.generator = generator
        self.device = device

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = torch.randperm(len(self.labels), generator=self.generator)
        for step in range(len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield {"images": self.normalize(self.images[idx].to(self.device)),
                   "labels": self.labels[idx].to(self.device)}


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch["images"]), batch["labels"])


@DEFENSES.register()
class Supervised(Defense):
    """Vision encoder + linear head finetuned with cross-entropy on the labelled clean images."""

    name = "supervised"
    version = "1"
    Config = SupervisedConfig

    def apply(self, model: nn.Module, clean_data: PairSet, context: DefenseContext) -> nn.Module:
        classnames = list(context.val_set.classnames)
        labels = clean_data.labels
        if len(labels) < 2 or bool(((labels < 0) | (labels >= len(classnames))).any()):
            raise UserError(f"{self.name} needs at least 2 clean images labelled with one of the preset's "
                            f"{len(classnames)} classes (labels in [0, {len(classnames) - 1}]); these pairs have "
                            f"labels in [{int(labels.min()) if len(labels) else '-'}, "
                            f"{int(labels.max()) if len(labels) else '-'}]")
        recipe = context.recipe  # the preset's [finetune] with this config's recipe fields set
        visual = model.visual
        with torch.no_grad():
            embed_dim = visual.eval()(Normalizer(model)(clean_data.images[:1].to(context.device))).shape[1]
        generator = torch.Generator().manual_seed(derive_seed(context.seed, "head"))
        probe = LinearProbeModel(visual, embed_dim, classnames, generator).to(context.device)
        batches = LabelledBatches(clean_data.images, labels, probe.normalize, recipe.batch_size,
                                  torch.Generator().manual_seed(context.seed), context.device)
        train(probe, batches, recipe, loss_fn=cross_entropy_loss, reporter=context.reporter,
              description=f"defense {self.name}")
        return probe
