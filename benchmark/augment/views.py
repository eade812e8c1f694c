"""Shuffled batches of original and augmented views of a split's pairs: an AutoAugment'ed copy of each image
(:mod:`benchmark.augment.image`), drawn anew on every visit, and an EDA copy of each caption
(:mod:`benchmark.augment.text`), drawn once (optionally redrawn every epoch), as CleanCLIP's official code makes
its views (github.com/nishadsinghi/CleanCLIP @ d6e2f1dbf0ad952c05b816c6024d8205682a0674, ``src/data.py``
L23-70, ``ImageCaptionDataset`` with ``inmodal``). Used by CleanCLIP and SSL-only, RoCLIP, SafeCLIP and the
``clip+ssl`` victim objective.
"""

from __future__ import annotations

import random
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.augment.image import BatchAutoAugment, auto_augment
from benchmark.augment.text import EDA
from benchmark.data.batches import Batch, Normalizer, rank_batches, to_device
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet
from benchmark.seeding import derive_seed


def default_augment_workers(device: torch.device) -> int:
    """DataLoader workers for the augmented views when the config leaves it open. On the CPU none: the batched
    AutoAugment is cheap next to a training step, and a worker process would take turns with the training
    threads on the same cores (an OpenMP team stalls whenever one of its threads is descheduled). On a GPU two,
    so the augmentation overlaps the GPU's work."""
    return 0 if device.type == "cpu" else 2


class AugmentedViews(Dataset):
    """Index, original uint8 image and an AutoAugment'ed copy, drawn anew on every access. DataLoader fetches a
    whole batch through ``__getitems__``, which augments it in one :class:`~benchmark.augment.image.BatchAutoAugment`
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


class AugmentedPairBatches:
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
