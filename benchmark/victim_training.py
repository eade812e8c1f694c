"""Training a victim with the objective its preset names (``[victim] objective``).

``clip``: the CLIP loss on the (poisoned) training pairs, as the CleanCLIP paper's victims are trained.
``clip+ssl``: Verma et al., "Effective Backdoor Mitigation in Vision-Language Models Depends on the
Pre-training Objective" (arXiv 2311.14948; code ``vsahil/attack-cleanclip`` @ 3d4bd74, ``src/train.py``
L14-130): the victim is pretrained with ``L_CLIP + w·L_SSL``, which is CleanCLIP's loss applied from scratch on
the poisoned pairs (methods reference §6). So this module reuses CleanCLIP's own loss and batches, which the
engine holds for every method that uses them (:func:`benchmark.training.clip_ssl_loss`,
:mod:`benchmark.augment.views`): AutoAugment views drawn per image and visit, one EDA caption per caption drawn
once.

Deviations from Verma et al., on purpose:

* The recipe (epochs, batch size, LR, warmup) is the preset's ``[victim]`` recipe, the same for both objectives,
  so the objective is the only thing that differs; Verma et al. halve the global batch for MMCL+SSL (1,024 vs
  2,048) and pick different checkpoints per objective (epochs 36 and 21 of 64).
* The victim is the preset's tiny ViT on Fashion-MNIST, not RN50 on CC3M/CC6M, and the poison is the preset's.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from benchmark.augment.text import EDA
from benchmark.augment.views import AugmentedPairBatches, default_augment_workers
from benchmark.data.batches import Normalizer, pair_batches
from benchmark.data.loader import Pairs
from benchmark.progress import Reporter
from benchmark.seeding import derive_seed
from benchmark.training import TrainStats, clip_ssl_loss, train
from benchmark.training_recipe import VictimRecipe


def train_victim(model: nn.Module, pairs: Pairs, recipe: VictimRecipe, tokenizer, seed: int, device: torch.device,
                 *, reporter: Reporter | None = None, description: str = "victim") -> TrainStats:
    """Train ``model`` in place on ``pairs`` with ``recipe`` and its objective; batches drawn from ``seed``."""
    batch_seed = derive_seed(seed, "victim-batches")
    if recipe.objective == "clip":
        batches = pair_batches(pairs, tokenizer, Normalizer(model), recipe.batch_size,
                               torch.Generator().manual_seed(batch_seed), device)
        return train(model, batches, recipe, reporter=reporter, description=description)
    batches = AugmentedPairBatches(pairs, tokenizer, Normalizer(model), recipe.batch_size, batch_seed, device,
                                   eda=EDA.with_default_wordnet(), redraw_text=False,
                                   num_workers=default_augment_workers(device))
    loss_fn = partial(clip_ssl_loss, clip_weight=1.0, inmodal_weight=recipe.ssl_weight)
    return train(model, batches, recipe, loss_fn=loss_fn, reporter=reporter, description=description)
