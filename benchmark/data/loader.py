"""Decoding a split of a source with DataLoader workers, skipping unreadable images within a budget.

Two paths share this code. Small splits are decoded once into the in-memory :class:`PairSet` / image tensor
(the fast path that attacks and the training loop use). A split whose decoded images would not fit in
``data.memory_gb`` becomes :class:`StreamingPairs`: decoded on the fly each epoch by worker processes, in a
fresh seeded order. Either way a corrupt or missing image is dropped with a warning that names it, and the
run stops with a :class:`UserError` once more than ``data.max_bad_images`` distinct images were dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.data.images import BadImage, decode
from benchmark.data.pairs import PairSet
from benchmark.data.sources import Source
from benchmark.errors import UserError

log = logging.getLogger("cleanbench.data")


@dataclass
class BadImageBudget:
    """Counts distinct skipped images across splits and epochs; raises once there are more than ``limit``."""

    limit: int
    skipped: dict[int, str] = field(default_factory=dict)  # source position -> reason

    def note(self, position: int, reason: str) -> None:
        if position in self.skipped:
            return
        self.skipped[position] = reason
        log.warning("skipped unreadable image %s (%d skipped, limit data.max_bad_images = %d)",
                    reason, len(self.skipped), self.limit)
        if len(self.skipped) > self.limit:
            raise UserError(f"{len(self.skipped)} images could not be read, more than data.max_bad_images = "
                            f"{self.limit}; the last: {reason}. Repair or remove them, or raise the limit.")


@dataclass
class DecodedBatch:
    """Decoded images (uint8, B×3×S×S), their captions and labels; ``indices`` into the requested positions;
    the skipped items as (source position, reason); ``augmented`` copies when an ``augment`` was given."""

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[int, str]]
    augmented: torch.Tensor | None = None  # the ``augment`` copies of ``images``, when asked for


class _Decoding(Dataset):
    """Map-style view of ``positions`` in ``source``; an unreadable item comes back as a skip record.

    ``augment`` (picklable: it runs in the workers) adds a second, transformed copy of each decoded image.
    """

    def __init__(self, source: Source, positions: np.ndarray, size: int,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.source, self.positions, self.size, self.augment = source, positions, size, augment

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        position = int(self.positions[k])
        try:
            item = self.source.read(position)
            image = decode(item.image, self.size)
            extra = self.augment(image) if self.augment is not None else None
            return k, position, image, item.caption, item.label, "", extra
        except BadImage as error:
            return k, position, None, "", -1, f"{self.source.describe(position)}: {error}", None


def _collate(samples) -> DecodedBatch:
    good = [s for s in samples if s[2] is not None]
    images = torch.stack([s[2] for s in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    augmented = torch.stack([s[6] for s in good]) if good and good[0][6] is not None else None
    return DecodedBatch(images, [s[3] for s in good], torch.tensor([s[4] for s in good], dtype=torch.int64),
                        torch.tensor([s[0] for s in good], dtype=torch.int64),
                        [(s[1], s[5]) for s in samples if s[2] is None], augmented)


def decode_batches(source: Source, positions: np.ndarray, size: int, batch_size: int, workers: int,
                   budget: BadImageBudget, *, drop_last: bool = False,
                   augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[DecodedBatch]:
    """The items at ``positions``, in that order, decoded by ``workers`` processes (0 = in this process)."""
    loader = DataLoader(_Decoding(source, positions, size, augment), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate, drop_last=drop_last,
                        prefetch_factor=4 if workers else None)
    for batch in loader:
        for position, reason in batch.skipped:
            budget.note(position, reason)
        yield batch


def materialise(source: Source, positions: np.ndarray, size: int, workers: int,
                budget: BadImageBudget) -> PairSet:
    """The readable items at ``positions`` decoded into memory, in that order; a skipped item leaves the split
    one shorter. Labelled sources give empty captions; caption sources give labels of -1."""
    images = torch.empty(len(positions), 3, size, size, dtype=torch.uint8)  # filled in place: no second copy
    captions: list[str] = []
    labels: list[torch.Tensor] = []
    for batch in decode_batches(source, positions, size, 256, workers, budget):
        images[len(captions) : len(captions) + len(batch.captions)] = batch.images
        captions += batch.captions
        labels.append(batch.labels)
    return PairSet(images[: len(captions)], captions,
                   torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64))


@dataclass
class StreamingPairs:
    """Pairs too many to hold in memory: read and decoded by DataLoader workers, each epoch in a new order.

    ``batches`` yields what :class:`benchmark.data.batches.PairBatches` yields from memory, uint8 images and
    captions, plus each pair's index in this split (``index``), so a trainer can poison chosen pairs on the fly.
    ``captions`` and ``labels`` read like a :class:`PairSet`'s (captions from the source, read without images,
    only when asked for), so attacks select pairs from a streamed split as from one in memory.
    """

    source: Source
    positions: np.ndarray  # positions in ``source``, one per pair of the split
    image_size: int
    workers: int
    budget: BadImageBudget

    def __post_init__(self) -> None:
        self.captions: Sequence[str] = LazyCaptions(self.source, self.positions)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> torch.Tensor:
        """-1 for every pair: pair sources carry captions, not class labels."""
        return torch.full((len(self.positions),), -1, dtype=torch.int64)

    def take(self, indices: torch.Tensor) -> tuple[PairSet, torch.Tensor]:
        """The pairs ``indices`` (of this split) decoded into memory, and which of ``indices`` could be read."""
        pairs = materialise(self.source, self.positions[indices.numpy()], self.image_size, self.workers, self.budget)
        unreadable = set(self.budget.skipped)
        kept = [i for i, p in zip(indices.tolist(), self.positions[indices.numpy()].tolist()) if p not in unreadable]
        return pairs, torch.tensor(kept, dtype=torch.int64)

    def batches(self, batch_size: int, generator: torch.Generator, *, rank: int = 0, ranks: int = 1,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict]:
        """One epoch in a seeded random order; the last incomplete batch is dropped (as in-memory batches are).

        With ``ranks`` > 1 (DDP) every rank draws the same order and decodes only its contiguous share of each
        global batch; every step is then yielded, even one whose images all failed, so the ranks stay in step.
        ``augment`` adds ``augmented``: a transformed copy of each image, made in the workers.
        """
        order = torch.randperm(len(self.positions), generator=generator)
        steps = len(order) // batch_size
        if batch_size % ranks:
            raise UserError(f"a batch of {batch_size} examples cannot be split evenly over {ranks} processes; "
                            f"choose a batch size divisible by {ranks}")
        share = batch_size // ranks
        mine = order[: steps * batch_size].view(steps, ranks, share)[:, rank].reshape(-1)
        for batch in decode_batches(self.source, self.positions[mine.numpy()], self.image_size, share,
                                    self.workers, self.budget, drop_last=True, augment=augment):
            if len(batch.captions) or ranks > 1:
                out = {"images": batch.images, "captions": batch.captions, "index": mine[batch.indices]}
                if augment is not None:
                    out["augmented"] = batch.augmented
                yield out


Pairs = Union[PairSet, StreamingPairs]  # a split of pairs: in memory, or streamed from disk


class LazyCaptions(Sequence[str]):
    """The captions of a streamed split: one is read on demand; iterating reads (and keeps) them all at once."""

    def __init__(self, source: Source, positions: np.ndarray) -> None:
        self.source, self.positions = source, positions
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index):  # type: ignore[override]
        if self._all is not None or isinstance(index, slice):
            return self.all()[index]
        return self.source.read_captions([int(self.positions[index])])[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())

    def all(self) -> list[str]:
        if self._all is None:
            self._all = self.source.read_captions(self.positions)
        return self._all
