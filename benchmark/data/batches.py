"""Turning image–caption pairs into training batches: the one place that does it, for victim training, the
finetuning defenses, attacks that train a surrogate, and plugins.

:func:`pair_batches` takes pairs held in memory (:class:`~benchmark.data.pairs.PairSet`, batched by
:class:`PairBatches`) or streamed off disk (:class:`~benchmark.data.loader.StreamingPairs`, or a poisoned one,
:class:`benchmark.poisoning.PoisonedStream`, batched by :class:`StreamedPairBatches`). Images are kept uint8 and
normalised per batch (:class:`Normalizer`); captions are tokenised. A streamed split is decoded by DataLoader
workers in a seeded order drawn exactly as ``PairBatches`` draws it (``randperm`` of the split with the same
generator), so without unreadable images a streamed split trains the same model as the same split in memory.

Under DDP (``sharded``) every rank takes only its share of each global batch. An unreadable image makes a
streamed share one shorter; open_clip's loss gathers equal-sized shares, so every rank cuts its share to the
shortest one (one all-reduce of an integer per step), and a step where a rank has nothing left is skipped by all.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn

from benchmark import distributed
from benchmark.data.pairs import PairSet
from benchmark.text_context import cut_tokens, encodes_captions_by_length

# A batch is a dict of tensors; the default one has "images" (normalised float) and "texts" (token ids).
Batch = dict[str, torch.Tensor]
Augment = Callable[[torch.Tensor], torch.Tensor]


class BatchStream(Protocol):
    """A split that yields decoded batches (``images`` uint8, ``captions``, ``index``) one epoch at a time."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, generator: torch.Generator, *, rank: int = 0, ranks: int = 1,
                augment: Augment | None = None) -> Iterator[dict]: ...


def rank_batches(pairs: BatchStream, batch_size: int, generator: torch.Generator, device: torch.device,
                 augment: Augment | None = None) -> Iterator[dict]:
    """This rank's share of each global batch of one epoch (the whole batch in a single process), uint8 on the
    CPU; under DDP every rank's share has the same length."""
    here = distributed.world()
    for batch in pairs.batches(batch_size, generator, rank=here.rank, ranks=here.size, augment=augment):
        if here.distributed:
            size = _shortest_share(len(batch["captions"]), device)
            if size == 0:
                continue
            batch = {key: value[:size] for key, value in batch.items()}
        yield batch


def _shortest_share(size: int, device: torch.device) -> int:
    count = torch.tensor([size], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images on ``device``; through pinned memory on CUDA so that the copy runs asynchronously."""
    if device.type == "cuda":
        return images.pin_memory().to(device, non_blocking=True)
    return images.to(device)


class Normalizer:
    """uint8 (B, 3, H, W) to the float input the CLIP model expects, with its preprocessing mean and std.

    The mean and std are copied to a device once and kept there (not copied again for every batch). It also
    records whether the model takes token batches cut to their captions' length (``cut_captions``, see
    :mod:`benchmark.text_context`), which the batch makers here read.
    """

    def __init__(self, model: nn.Module) -> None:
        mean = getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.cut_captions = encodes_captions_by_length(model)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Accepts uint8 images or float images in [0, 1]."""
        floats = images.float().div(255.0) if images.dtype == torch.uint8 else images
        mean_std = self._on_device.get(floats.device)
        if mean_std is None:
            mean_std = self._on_device[floats.device] = (self.mean.to(floats.device), self.std.to(floats.device))
        return (floats - mean_std[0]) / mean_std[1]


def batch_tokens(tokens: torch.Tensor, normalizer: object, device: torch.device) -> torch.Tensor:
    """A batch's token ids (on the CPU) on ``device``, cut to the captions' length first where the model takes
    them so (:func:`benchmark.text_context.cut_tokens`: the cut is worked out here, not by a sync on the
    device)."""
    if getattr(normalizer, "cut_captions", False):
        tokens = cut_tokens(tokens)
    return tokens.to(device)


class PairBatches:
    """Shuffled mini-batches of in-memory pairs: images normalised, captions tokenised once up front.

    Under DDP every rank draws the same global order and gathers only its share of each global batch
    (``sharded``), so the global batches are those of a single process with the same seed.
    """

    sharded = True

    def __init__(self, pairs: PairSet, tokenizer, normalizer: Normalizer, batch_size: int, generator: torch.Generator,
                 device: torch.device) -> None:
        self.images = pairs.images
        self.tokens = tokenizer(pairs.captions)
        self.normalize = normalizer
        self.batch_size = batch_size
        self.generator = generator
        self.device = device

    def __len__(self) -> int:
        return max(1, len(self.tokens) // self.batch_size)  # drop_last, as open_clip and CleanCLIP do

    def __iter__(self) -> Iterator[Batch]:
        order = torch.randperm(len(self.tokens), generator=self.generator)
        for step in range(len(self)):
            idx = distributed.shard_indices(order[step * self.batch_size : (step + 1) * self.batch_size])
            images = self.images[idx]
            if self.device.type == "cuda":  # a pinned staging copy lets the transfer run asynchronously
                images = images.pin_memory().to(self.device, non_blocking=True)
            yield {
                "images": self.normalize(images.to(self.device)),
                "texts": batch_tokens(self.tokens[idx], self.normalize, self.device),
            }


class StreamedPairBatches:
    """Shuffled mini-batches of a streamed split: images normalised, captions tokenised per batch."""

    sharded = True  # each rank decodes and yields only its share (see the module docstring)

    def __init__(self, pairs: BatchStream, tokenizer, normalizer: Normalizer, batch_size: int,
                 generator: torch.Generator, device: torch.device) -> None:
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.normalize = normalizer
        self.batch_size = min(batch_size, len(pairs))  # a split smaller than a batch is one batch, as in memory
        self.generator = generator
        self.device = device

    def __len__(self) -> int:
        return max(1, len(self.pairs) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for batch in rank_batches(self.pairs, self.batch_size, self.generator, self.device):
            yield {"images": self.normalize(to_device(batch["images"], self.device)),
                   "texts": batch_tokens(self.tokenizer(batch["captions"]), self.normalize, self.device)}


def pair_batches(pairs: PairSet | BatchStream, tokenizer, normalizer: Normalizer, batch_size: int,
                 generator: torch.Generator, device: torch.device) -> PairBatches | StreamedPairBatches:
    """Contrastive training batches of ``pairs``, from memory or streamed, whichever ``pairs`` is: the one
    call victim training, the finetuning defenses and plugins use."""
    if isinstance(pairs, PairSet):
        return PairBatches(pairs, tokenizer, normalizer, batch_size, generator, device)
    return StreamedPairBatches(pairs, tokenizer, normalizer, batch_size, generator, device)
