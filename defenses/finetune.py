"""Plain multimodal contrastive finetuning on clean pairs: the CleanCLIP paper's "MMCL finetuning" baseline.

Same loss as CLIP pretraining (open_clip's ``ClipLoss``), on the preset's clean pairs, with the preset's
finetuning recipe (reference §4: AdamW, weight decay 0.1, cosine schedule with warmup). The clean pairs may be
held in memory or streamed from disk (:mod:`benchmark.data.batches`).

Deviations from the CleanCLIP code: no AdamW moments are carried over from the victim's optimizer (the official
``--complete_finetune`` path loads them, reference §4); warmup happens from step 0 (the official step offset
skips it, reference §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchmark.data.batches import Normalizer, pair_batches
from benchmark.data.loader import Pairs
from benchmark.training import clip_loss, train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext, check_recipe_overrides


@dataclass(frozen=True)
class FinetuneConfig:
    """Unset (None) fields take the preset's ``[finetune]`` recipe, so every defense shares one budget by default."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    tuning: Literal["fixed-in-preset"] = "fixed-in-preset"  # how the recipe was chosen, recorded in the results

    def __post_init__(self) -> None:
        check_recipe_overrides(self)


@DEFENSES.register()
class Finetune(Defense):
    """CLIP-loss finetuning of both encoders on the clean pairs."""

    name = "finetune"
    version = "1"
    Config = FinetuneConfig

    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        recipe = context.recipe  # the preset's [finetune] with this config's recipe fields set
        generator = torch.Generator().manual_seed(context.seed)
        batches = pair_batches(clean_data, context.tokenizer, Normalizer(model), recipe.batch_size, generator,
                              context.device)
        train(model, batches, recipe, loss_fn=clip_loss, reporter=context.reporter, description=f"defense {self.name}")
        return model
