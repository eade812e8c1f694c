"""CleanCLIP (Bansal, Singhi, Yang, Yin, Grover, Chang, ICCV 2023, arXiv 2303.03323): finetuning on clean pairs
with the CLIP loss plus a unimodal self-supervised loss, so that each modality's representation is re-learned
independently of the (possibly backdoored) cross-modal alignment.

``L = λ1·L_CLIP + λ2·L_SS`` (a plain sum, as ``src/train.py::get_loss`` with ``--inmodal``, reference §4):
- ``L_CLIP``: open_clip's symmetric ``ClipLoss`` on the original images and original captions.
- ``L_SS = ½[CE(s·I·Ĩᵀ) + CE(s·T·T̃ᵀ)]``: one-directional, from each original image to the augmented views and
  from each original caption to the augmented captions, targets on the diagonal, so the in-batch negatives are
  the other samples' augmented views only; ``s`` is the model's shared, learnable temperature.
- The N originals and N augmented views go through the model in one forward pass of 2N images and 2N texts.
- Image augmentation: torchvision's AutoAugment (ImageNet policy), drawn anew for every image on every visit,
  on the augmented view only (a batch at a time, :mod:`benchmark.augment.image`; DataLoader workers on a
  GPU). Text augmentation: EDA (:mod:`benchmark.augment.text`), one caption per caption, drawn once
  (optionally redrawn every epoch). The views, their batches and the loss are the engine's, shared with
  SSL-only, RoCLIP, SafeCLIP and the ``clip+ssl`` victim (:mod:`benchmark.augment.views`,
  :func:`benchmark.training.clip_ssl_loss`); this module is the defense that uses them.

Departures from the official code (nishadsinghi/CleanCLIP), all deliberate:
- Schedule: warmup runs from step 0. The official loop numbers steps from ``num_batches`` (reference §3/§8.4),
  so its 50 warmup steps never happen, the cosine reaches 0 one epoch early and the LR rises again in the last.
- Optimizer state: AdamW starts from zero moments. The official ``--complete_finetune`` path loads the
  poisoned checkpoint's pretraining AdamW moments (``src/main.py`` L133, reference §4, §8.4 item 6).
- Hyperparameters: epochs, batch size, LR, weight decay and AdamW betas/eps come from the preset's
  ``[finetune]`` recipe, shared by every defense for a fair comparison (the paper: 10 epochs, batch 64, lr 1e-5).
- Augmentation runs on the decoded uint8 images at the model's resolution (held in memory, or decoded from
  disk by the workers of a streamed split), not on a 224 px PIL image before Resize/CenterCrop; it uses
  ``torchvision.transforms.v2.AutoAugment`` (same ImageNet policy, nearest interpolation, no fill), whose
  operations are faster than v1's on small uint8 tensors, a batch at a time (the epoch's cost against plain
  finetuning: ``benchmarks/results/perf-2026-11-28.md``).
- EDA: seeded and reproducible (see :mod:`benchmark.augment.text` for its own small deviations).
- λ2 = 0 is plain CLIP finetuning: no augmented views are made or forwarded (the official code still forwards
  them with ``--inmodal``, which only matters for BatchNorm statistics).
- Under DDP both L_CLIP and L_SS are computed over the global batch (features all-gathered with gradients), as
  one process with that batch would; the official code all-gathers the originals and the augmented views too
  (reference §4).
  The final epoch's model is returned, as the official ``--complete_finetune`` run reports its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchmark.augment.text import EDA
from benchmark.augment.views import AugmentedPairBatches, default_augment_workers
from benchmark.config import check_range
from benchmark.data.batches import Batch, Normalizer, pair_batches
from benchmark.data.loader import Pairs
from benchmark.deprecations import moved_names
from benchmark.errors import UserError
from benchmark.training import clip_ssl_loss, train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext, check_recipe_overrides

__getattr__ = moved_names(__name__)  # the shared views and loss that lived here once (now in the engine)


@dataclass(frozen=True)
class CleanCLIPConfig:
    """λ1 (``clip_weight``) and λ2 (``inmodal_weight``) as the official flags name them; unset (None) recipe
    fields take the preset's ``[finetune]`` recipe. ``tuning`` records how the hyperparameters were chosen."""

    clip_weight: float = 1.0
    inmodal_weight: float = 1.0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    eda_alpha: float = 0.1
    redraw_text_each_epoch: bool = False
    num_workers: int | None = None  # None: 0 on the CPU, 2 on a GPU (see default_augment_workers)
    tuning: Literal["fixed-in-preset"] = "fixed-in-preset"

    def __post_init__(self) -> None:
        check_range("clip_weight", self.clip_weight, 0.0, 1_000.0)
        check_range("inmodal_weight", self.inmodal_weight, 0.0, 1_000.0)
        if self.clip_weight == 0 and self.inmodal_weight == 0:
            raise UserError("clip_weight and inmodal_weight are both 0: the loss would be constant")
        check_recipe_overrides(self)
        check_range("eda_alpha", self.eda_alpha, 0.0, 1.0)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 256)


@DEFENSES.register()
class CleanCLIP(Defense):
    """CLIP loss plus unimodal self-supervision on clean pairs, both encoders finetuned (reference §4)."""

    name = "cleanclip"
    version = "2"  # 2: AutoAugment drawn per image but applied a batch at a time (other draws, same distribution)
    Config = CleanCLIPConfig

    def passes_per_pair(self) -> float:
        """The original and its augmented view go through the model together: two passes, one with λ2 = 0."""
        return 2.0 if self.config.inmodal_weight > 0 else 1.0

    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        config = self.config
        if len(clean_data) < 2:
            raise UserError(f"{self.name} needs at least 2 clean pairs, got {len(clean_data)}")
        recipe = context.recipe  # the preset's [finetune] with this config's recipe fields set
        if config.inmodal_weight == 0:
            batches = pair_batches(clean_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                                  torch.Generator().manual_seed(context.seed), context.device)
        else:
            batches = AugmentedPairBatches(clean_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                                           context.seed, context.device,
                                           eda=EDA.with_default_wordnet(config.eda_alpha),
                                           redraw_text=config.redraw_text_each_epoch,
                                           num_workers=(config.num_workers if config.num_workers is not None
                                                        else default_augment_workers(context.device)))

        def loss_fn(net: nn.Module, batch: Batch) -> torch.Tensor:
            return clip_ssl_loss(net, batch, config.clip_weight, config.inmodal_weight)

        train(model, batches, recipe, loss_fn=loss_fn, reporter=context.reporter, description=f"defense {self.name}")
        return model
