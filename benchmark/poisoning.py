"""Poisoning a victim's training split, held in memory or streamed from disk, with the same attack code.

In memory, ``attack.poison`` returns a poisoned copy of the pairs. A streamed split (too large for memory,
:class:`~benchmark.data.loader.StreamingPairs`) cannot be copied, so it is poisoned in three steps, each the
attack's own: ``select`` picks the indices from the split's captions and labels (no image is decoded), only
those pairs are decoded, and ``poison_selected`` poisons them, exactly as ``poison`` does in memory. The result
is a :class:`PoisonedStream`: the split, whose batches get the poisoned image and caption swapped in wherever
a chosen index comes up.

Why the chosen images are poisoned once, up front, rather than per batch: every epoch sees the same poisoned
image (a poisoned dataset, as in the paper and in memory), attacks that need all chosen images together
(label-consistent PGD) work unchanged, and with the same generator the poisoned pairs are bit for bit those of
the in-memory path. The cost is memory for the poisoned images only (1,500 at 224 px: 0.2 GB), checked
against ``data.memory_gb``. A chosen pair whose image cannot be read is left out, and listed in the manifest
(``extra.unreadable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from attacks.base import Attack, PoisonManifest, PoisonTarget
from benchmark.data.loader import StreamingPairs
from benchmark.data.pairs import PairSet
from benchmark.errors import UserError

GB = 1e9


@dataclass
class PoisonedStream:
    """A streamed split with the pairs at ``indices`` replaced by ``poisoned`` (images and captions)."""

    stream: StreamingPairs
    indices: torch.Tensor  # indices in the split, sorted
    poisoned: PairSet  # one pair per index
    _slot: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slot = torch.full((len(self.stream),), -1, dtype=torch.int64)
        self._slot[self.indices] = torch.arange(len(self.indices))

    def __len__(self) -> int:
        return len(self.stream)

    def batches(self, batch_size: int, generator: torch.Generator, **options) -> Iterator[dict]:
        """The stream's batches (see :meth:`StreamingPairs.batches`) with the poisoned pairs swapped in."""
        for batch in self.stream.batches(batch_size, generator, **options):
            slots = self._slot[batch["index"]]
            hits = torch.nonzero(slots >= 0).squeeze(1).tolist()
            if hits:
                batch["images"][hits] = self.poisoned.images[slots[hits]]
                for k in hits:
                    batch["captions"][k] = self.poisoned.captions[int(slots[k])]
            yield batch


def poison_split(attack: Attack, pairs: PairSet | StreamingPairs, target: PoisonTarget, count: int,
                 generator: torch.Generator, memory_gb: float) -> tuple[PairSet | PoisonedStream, PoisonManifest]:
    """The victim's training pairs poisoned by ``attack``, in memory or streamed as ``pairs`` is, and the
    manifest of what changed."""
    if isinstance(pairs, PairSet):
        return attack.poison(pairs, target, count, generator)
    if not attack.poisons_selected_only():
        raise UserError(f"attack {attack.name} (with this config) changes more pairs than it selects, which a streamed "
                        f"training split cannot hold; raise data.memory_gb so the {len(pairs)} training pairs are "
                        f"held in memory, or change the attack's config")
    size = pairs.image_size
    if count * 3 * size * size > memory_gb * GB:
        raise UserError(f"{count} poisoned images at {size} px ({count * 3 * size * size / GB:.1f} GB) exceed "
                        f"data.memory_gb = {memory_gb}; raise it or lower the poison count")
    indices = attack.select(pairs, target, count, generator)
    chosen, readable = pairs.take(indices)
    poisoned, manifest = attack.poison_selected(chosen, readable, target, generator)
    unreadable = sorted(set(indices.tolist()) - set(readable.tolist()))
    if unreadable:
        manifest.extra["unreadable"] = unreadable
    return PoisonedStream(pairs, readable, poisoned), manifest
