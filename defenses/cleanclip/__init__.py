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
  on the augmented view only (a batch at a time, :mod:`defenses.cleanclip.augment`; DataLoader workers on a
  GPU). Text augmentation: EDA (:mod:`defenses.cleanclip.text_augment`), one caption per caption, drawn once
  (optionally redrawn every epoch).

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
- EDA: seeded and reproducible (see :mod:`defenses.cleanclip.text_augment` for its own small deviations).
- λ2 = 0 is plain CLIP finetuning: no augmented views are made or forwarded (the official code still forwards
  them with ``--inmodal``, which only matters for BatchNorm statistics).
- Under DDP both L_CLIP and L_SS are computed over the global batch (features all-gathered with gradients), as
  one process with that batch would; the official code all-gathers the originals and the augmented views too
  (reference §4).
  The final epoch's model is returned, as the official ``--complete_finetune`` run reports its last checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from defenses.cleanclip.augment import BatchAutoAugment
from benchmark.config import check_range
from benchmark.data.batches import Batch, Normalizer, pair_batches, rank_batches, to_device
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet
from benchmark.distributed import clip_loss_options, gather_global
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from defenses.cleanclip.text_augment import EDA
from benchmark.training import clip_loss, train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext, check_recipe_overrides


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


def default_augment_workers(device: torch.device) -> int:
    """DataLoader workers for the augmented views when the config leaves it open. On the CPU none: the batched
    AutoAugment is cheap next to a training step, and a worker process would take turns with the training
    threads on the same cores (an OpenMP team stalls whenever one of its threads is descheduled). On a GPU two,
    so the augmentation overlaps the GPU's work."""
    return 0 if device.type == "cpu" else 2


def self_supervised_loss(images: torch.Tensor, augmented_images: torch.Tensor, texts: torch.Tensor,
                         augmented_texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's L_SS on L2-normalised embeddings: original → augmented, negatives = other augmented views."""
    targets = torch.arange(len(images), device=images.device)
    image_term = F.cross_entropy(logit_scale * images @ augmented_images.T, targets)
    text_term = F.cross_entropy(logit_scale * texts @ augmented_texts.T, targets)
    return (image_term + text_term) / 2


def cleanclip_loss(model: nn.Module, batch: Batch, clip_weight: float = 1.0,
                   inmodal_weight: float = 1.0) -> torch.Tensor:
    """``λ1·L_CLIP + λ2·L_SS`` for a batch with ``images``/``texts`` and ``augmented_images``/``augmented_texts``."""
    if inmodal_weight == 0:
        return clip_weight * clip_loss(model, batch)
    from open_clip import ClipLoss

    n = len(batch["images"])
    out = model(torch.cat([batch["images"], batch["augmented_images"]]),
                torch.cat([batch["texts"], batch["augmented_texts"]]))
    images, augmented_images = out["image_features"].split(n)
    texts, augmented_texts = out["text_features"].split(n)
    scale = out["logit_scale"]
    # Under DDP both terms span the global batch: L_SS's negatives are every rank's augmented views.
    loss = inmodal_weight * self_supervised_loss(*gather_global(images, augmented_images, texts, augmented_texts),
                                                 scale)
    if clip_weight > 0:
        loss = loss + clip_weight * ClipLoss(**clip_loss_options())(images, texts, scale)
    return loss


class AugmentedViews(Dataset):
    """Index, original uint8 image and an AutoAugment'ed copy, drawn anew on every access. DataLoader fetches a
    whole batch through ``__getitems__``, which augments it in one :class:`~defenses.cleanclip.augment.BatchAutoAugment`
    call (in a worker, or in this process with ``num_workers = 0``)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.augment = BatchAutoAugment()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        index, image, augmented = self.__getitems__([index])
        return int(index[0]), image[0], augmented[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices)
        images = self.images[rows]
        return rows, images, self.augment(images)


def _already_batched(batch):
    """DataLoader's collate step for :class:`AugmentedViews`, whose ``__getitems__`` returns whole batches."""
    return batch


def auto_augment():
    """torchvision's AutoAugment with the ImageNet policy, on uint8 image tensors."""
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


class CleanCLIPBatches:
    """Shuffled batches of original and augmented views; images come from DataLoader workers, while captions
    are tokenised in the main process so that an epoch's EDA redraw reaches every (persistent) worker.

    In-memory pairs are augmented by :class:`AugmentedViews`; a streamed split's workers decode each image and
    augment it in the same worker, each rank its share of every global batch (``sharded``). The captions of a
    streamed split are read (without images) and tokenised once, like those in memory.
    """

    def __init__(self, pairs: Pairs, tokenizer, normalizer: Normalizer, batch_size: int, seed: int,
                 device: torch.device, *, eda: EDA, redraw_text: bool, num_workers: int) -> None:
        self.captions = list(pairs.captions)
        self.tokenizer = tokenizer
        self.normalize = normalizer
        self.device = device
        self.eda = eda
        self.redraw_text = redraw_text
        self.text_rng = random.Random(derive_seed(seed, "eda"))
        self.tokens = tokenizer(self.captions)
        self.augmented_tokens = tokenizer(eda.augment_all(self.captions, self.text_rng))
        self.epochs_started = 0
        self.batch_size = min(batch_size, len(pairs))
        self.sharded = not isinstance(pairs, PairSet)
        if self.sharded:  # streamed: decoded (and augmented) by the split's own workers
            self.stream, self.loader = pairs, None
            self.generator = torch.Generator().manual_seed(derive_seed(seed, "batches"))
            return
        self.loader = DataLoader(
            AugmentedViews(pairs.images), batch_size=self.batch_size, shuffle=True, drop_last=True,
            collate_fn=_already_batched,
            num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(derive_seed(seed, "batches")),
        )

    def __len__(self) -> int:
        return len(self.loader) if self.loader is not None else max(1, len(self.stream) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.redraw_text and self.epochs_started > 0:
            self.augmented_tokens = self.tokenizer(self.eda.augment_all(self.captions, self.text_rng))
        self.epochs_started += 1
        for index, images, augmented in self._views():
            yield {
                "images": self.normalize(images.to(self.device, non_blocking=True)),
                "augmented_images": self.normalize(augmented.to(self.device, non_blocking=True)),
                "texts": self.tokens[index].to(self.device),
                "augmented_texts": self.augmented_tokens[index].to(self.device),
            }

    def _views(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(indices in the split, original uint8 images, augmented uint8 images) per batch."""
        if self.loader is not None:
            yield from self.loader
            return
        for batch in rank_batches(self.stream, self.batch_size, self.generator, self.device, augment=auto_augment()):
            yield batch["index"], to_device(batch["images"], self.device), to_device(batch["augmented"], self.device)


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
            batches = CleanCLIPBatches(clean_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                                       context.seed, context.device, eda=EDA.with_default_wordnet(config.eda_alpha),
                                       redraw_text=config.redraw_text_each_epoch,
                                       num_workers=(config.num_workers if config.num_workers is not None
                                                    else default_augment_workers(context.device)))

        def loss_fn(net: nn.Module, batch: Batch) -> torch.Tensor:
            return cleanclip_loss(net, batch, config.clip_weight, config.inmodal_weight)

        train(model, batches, recipe, loss_fn=loss_fn, reporter=context.reporter, description=f"defense {self.name}")
        return model
