"""Training batches from a split streamed off disk: what :class:`benchmark.training.PairBatches` gives from memory.

A streamed split (:class:`~benchmark.data.loader.StreamingPairs`, or a poisoned one,
:class:`benchmark.poisoning.PoisonedStream`) is decoded by DataLoader workers in a seeded order; here each
batch is normalised and its captions tokenised. The order is drawn exactly as ``PairBatches`` draws it
(``randperm`` of the split with the same generator), so without unreadable images a streamed split trains the
same model as the same split held in memory.

Under DDP (``sharded``) every rank decodes only its share of each global batch. An unreadable image makes a
share one shorter; open_clip's loss gathers equal-sized shares, so every rank cuts its share to the shortest
one (one all-reduce of an integer per step), and a step where a rank has nothing left is skipped by all.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
import torch.distributed as dist

from benchmark import distributed
from benchmark.data.pairs import PairSet
from benchmark.training import Batch, Normalizer, PairBatches

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
                   "texts": self.tokenizer(batch["captions"]).to(self.device)}


def pair_batches(pairs: PairSet | BatchStream, tokenizer, normalizer: Normalizer, batch_size: int,
                 generator: torch.Generator, device: torch.device) -> PairBatches | StreamedPairBatches:
    """Contrastive training batches of ``pairs``, from memory or streamed, whichever ``pairs`` is: the one
    call victim training, the finetuning defenses and plugins use."""
    if isinstance(pairs, PairSet):
        return PairBatches(pairs, tokenizer, normalizer, batch_size, generator, device)
    return StreamedPairBatches(pairs, tokenizer, normalizer, batch_size, generator, device)
