"""The one interface every on-disk dataset format offers: random access to items, cheap to send to workers.

Each format is a :class:`Source` subclass in its own module, named in :data:`benchmark.data.formats.FORMATS`
and opened by :func:`benchmark.data.formats.open_source`. A source is opened once per process (memoised on its
spec) and indexed up front, so splits are exact,
disjoint and reproducible from ``split_seed`` whatever the format, and DataLoader workers can read any item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from benchmark.data.images import RawImage
from benchmark.presets import SourceSpec


@dataclass(frozen=True)
class Item:
    """One stored item: the image (not yet decoded), its caption (pairs) or label (labelled sets, else -1)."""

    image: RawImage
    caption: str = ""
    label: int = -1


class Source(ABC):
    """Random access to the items of one dataset; ``classnames``/``templates`` are set by labelled sources."""

    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()  # the source's own zero-shot templates ("{}" = class name), if it has any

    @classmethod
    def from_spec(cls, spec: SourceSpec, role: str) -> "Source":
        """The source ``spec`` describes (``role``: "train" for pairs, "eval" for labelled images); formats whose
        spec carries more than a path override this."""
        return cls(spec.path)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> Item:
        """Item ``index``; may raise :class:`~benchmark.data.images.BadImage` (counted and skipped by the loader)."""

    def read_captions(self, indices: Sequence[int]) -> list[str]:
        """The captions of items ``indices``, without decoding images (poison selection reads every caption of a
        streamed split). Formats that can read a caption alone override this item-by-item default."""
        return [self.read(int(index)).caption for index in indices]

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where item ``index`` lives (a file, a shard member, a row), for the warning when it is skipped."""
