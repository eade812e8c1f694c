"""Image–caption pairs in WebDataset tar shards, as img2dataset writes CC3M: ``00000.tar`` holding ``KEY.jpg``,
``KEY.txt`` (and ``KEY.json``) per pair.

The shards are indexed once (tar headers only: each member's offset and size), so a pair is read with one seek
and splits stay exact and disjoint, like the CSV format's; the ``webdataset`` package's sequential reading
would make both depend on shard order. ``path`` is a folder of ``*.tar`` files, one ``.tar`` file, or a glob.
A pair whose caption is missing is kept and skipped when read, so it counts against ``max_bad_images``.
"""

from __future__ import annotations

import glob
import json
import tarfile
from pathlib import Path

import numpy as np

from benchmark.data.images import BadImage
from benchmark.data.sources import Item, Source
from benchmark.errors import UserError
from benchmark.presets import SourceSpec


def find_shards(path: str) -> list[Path]:
    """The shard files ``path`` names, sorted; an empty list when there are none."""
    target = Path(path)
    if target.is_dir():
        return sorted(target.glob("*.tar"))
    if target.is_file():
        return [target]
    return [Path(p) for p in sorted(glob.glob(path)) if p.endswith(".tar")]


def count_pairs(path: str) -> int | None:
    """The pair count from img2dataset's ``NNNNN_stats.json`` files (``successes``), if every shard has one."""
    total = 0
    for shard in find_shards(path):
        stats = shard.with_name(f"{shard.stem}_stats.json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text()).get("successes", 0))
    return total


class WebDatasetPairs(Source):
    """Pairs from tar shards; ``image_key`` lists the accepted image extensions (``jpg;png``), first match wins."""

    @classmethod
    def from_spec(cls, spec: SourceSpec, role: str) -> "WebDatasetPairs":
        return cls(spec.path, spec.image_key or "jpg;jpeg;png;webp", spec.caption_key or "txt")

    def __init__(self, path: str, image_key: str, caption_key: str) -> None:
        self.shards = find_shards(path)
        if not self.shards:
            raise UserError(f"no WebDataset shards (*.tar) at {path}")
        image_exts = [ext.strip().lower() for ext in image_key.split(";") if ext.strip()]
        rows: list[tuple[int, int, int, int, int]] = []
        self.keys: list[str] = []
        for number, shard in enumerate(self.shards):
            for key, image, caption in _index_shard(shard, image_exts, caption_key.lower()):
                self.keys.append(key)
                rows.append((number, *image, *caption))
        # shard, image offset, image size, caption offset, caption size (-1: no caption)
        self.index = np.array(rows, dtype=np.int64).reshape(-1, 5)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> Item:
        shard, image_at, image_size, caption_at, caption_size = self.index[index].tolist()
        with open(self.shards[shard], "rb") as handle:
            if caption_size < 0:
                raise BadImage("no caption in the shard")
            handle.seek(caption_at)
            caption = handle.read(caption_size).decode("utf-8", errors="replace").strip()
            handle.seek(image_at)
            return Item(handle.read(image_size), caption)

    def read_captions(self, indices) -> list[str]:
        """Only the caption members are read (one seek each); a missing caption reads as ""."""
        captions, handles = [], {}
        try:
            for index in indices:
                shard, _, _, caption_at, caption_size = self.index[int(index)].tolist()
                if caption_size < 0:
                    captions.append("")
                    continue
                handle = handles.get(shard) or handles.setdefault(shard, open(self.shards[shard], "rb"))
                handle.seek(caption_at)
                captions.append(handle.read(caption_size).decode("utf-8", errors="replace").strip())
        finally:
            for handle in handles.values():
                handle.close()
        return captions

    def describe(self, index: int) -> str:
        return f"{self.shards[int(self.index[index, 0])]}:{self.keys[index]}"


def _index_shard(shard: Path, image_exts: list[str], caption_ext: str):
    """(key, (offset, size) of the image, (offset, size) of the caption) for every key with an image."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if dot:
                    key = f"{folder}/{stem}" if folder else stem
                    members.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"WebDataset shard {shard} is not a readable tar file: {error}") from None
    for key, parts in members.items():
        image = next((parts[ext] for ext in image_exts if ext in parts), None)
        if image is not None:
            yield key, image, parts.get(caption_ext, (0, -1))
