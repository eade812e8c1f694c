"""Image–caption pairs listed in a CSV file, the format of the CleanCLIP code (reference §1).

One row per pair: an image-path column (``image`` by default) and a caption column (``caption``); relative
paths are relative to the CSV's folder, as CleanCLIP's ``ImageCaptionDataset`` resolves them. A path whose
file is missing or unreadable is not an error here: the loader skips and counts it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.data.sources import Item, Source
from benchmark.errors import UserError
from benchmark.presets import SourceSpec


class CsvPairs(Source):
    """Pairs from a CSV file; only the two named columns are read (all as text)."""

    @classmethod
    def from_spec(cls, spec: SourceSpec, role: str) -> "CsvPairs":
        return cls(spec.path, spec.image_key or "image", spec.caption_key or "caption", spec.separator)

    def __init__(self, path: str, image_key: str, caption_key: str, separator: str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"CSV file {self.path} does not exist")
        try:
            header = pd.read_csv(self.path, sep=separator, nrows=0).columns.tolist()
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise UserError(f"{self.path} is not a readable CSV file: {error}".splitlines()[0]) from None
        missing = [key for key in (image_key, caption_key) if key not in header]
        if missing:
            raise UserError(f"{self.path} has no column {', '.join(map(repr, missing))}; its columns: "
                            f"{', '.join(map(str, header))} (set image_key / caption_key of the source)")
        table = pd.read_csv(self.path, sep=separator, usecols=[image_key, caption_key], dtype=str,
                            keep_default_na=False)
        self.root = self.path.parent
        self.images: list[str] = table[image_key].tolist()
        self.captions: list[str] = table[caption_key].tolist()

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> Item:
        return Item(self.root / self.images[index], self.captions[index])

    def read_captions(self, indices) -> list[str]:
        return [self.captions[int(index)] for index in indices]

    def describe(self, index: int) -> str:
        return f"{self.root / self.images[index]} (row {index + 2} of {self.path})"
