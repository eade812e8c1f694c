"""Plain multimodal contrastive finetuning on clean pairs: the CleanCLIP paper's "MMCL finetuning" baseline.

Same loss as CLIP pretraining (open_clip's ``ClipLoss``), on the preset's clean pairs, with the preset's
finetuning recipe (reference §4: AdamW, weight decay 0.1, cosine schedule with warmup).

Deviations from the CleanCLIP code: no AdamW moments are carried over from the victim's optimizer (the official
``--complete_finetune`` path loads them, reference §4); warmup happens from step 0 (the official step offset
skips it, reference §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.config import check_range
from benchmark.data.pairs import PairSet
from benchmark.training import Normalizer, PairBatches, clip_loss, train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext


@dataclass(frozen=True)
class FinetuneConfig:
    """Unset (None) fields take the preset's ``[finetune]`` recipe, so every defense shares one budget by default."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None:
            check_range("epochs", self.epochs, 1, 10_000)
        if self.lr is not None:
            check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 2, 1_000_000)


@DEFENSES.register()
class Finetune(Defense):
    """CLIP-loss finetuning of both encoders on the clean pairs."""

    name = "finetune"
    version = "1"
    Config = FinetuneConfig

    def apply(self, model: nn.Module, clean_data: PairSet, context: DefenseContext) -> nn.Module:
        recipe = context.recipe_with(epochs=self.config.epochs, lr=self.config.lr, batch_size=self.config.batch_size)
        generator = torch.Generator().manual_seed(context.seed)
        batches = PairBatches(clean_data, context.tokenizer, Normalizer(model), recipe.batch_size, generator,
                              context.device)
        train(model, batches, recipe, loss_fn=clip_loss, reporter=context.reporter, description=f"defense {self.name}")
        return model
