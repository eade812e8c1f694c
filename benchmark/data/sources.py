"""The one interface every on-disk dataset format offers: random access to items, cheap to send to workers.

A source is opened once per process (memoised on its spec) and indexed up front, so splits are exact,
disjoint and reproducible from ``split_seed`` whatever the format, and DataLoader workers can read any item.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def open_source(spec: SourceSpec, role: str) -> Source:
    """The source ``spec`` describes (``role`` is "train" for pairs or "eval" for labelled images), indexed.

    ``spec.path`` must already be expanded (see :mod:`benchmark.data.resolve`). Raises ``UserError`` when the
    data is missing or not in the stated format.
    """
    if spec.format == "csv":
        from benchmark.data.csv_pairs import CsvPairs

        return CsvPairs(spec.path, spec.image_key or "image", spec.caption_key or "caption", spec.separator)
    if spec.format == "webdataset":
        from benchmark.data.webdataset_pairs import WebDatasetPairs

        return WebDatasetPairs(spec.path, spec.image_key or "jpg;jpeg;png;webp", spec.caption_key or "txt")
    if spec.format == "hf":
        from benchmark.data.hf_pairs import HfSource

        return HfSource(spec.path, spec.split, role, spec.image_key, spec.caption_key, spec.label_key)
    if spec.format == "imagefolder":
        from benchmark.data.image_folder import ImageFolder

        return ImageFolder(spec.path)
    if spec.format == "imagenet":
        from benchmark.data.imagenet import ImageNetFolder

        return ImageNetFolder(spec.path)
    raise ValueError(f"unknown source format {spec.format!r}")  # DataSpec refuses these first
