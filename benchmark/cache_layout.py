"""Where a run's cache lies on disk, written down once: :class:`benchmark.runner.store.ArtifactStore` builds on it,
and everything else that reads a run folder (``submit``, ``verify``, the leaderboard) asks it rather than spelling
out ``cache/cells/...`` itself::

    <run folder>/cache/                      CacheLayout.of_run(out).root
        victims/<key>/                       checkpoint, poison manifest, meta
        pretrained/<key>/                    the clean model victims start from
        cells/<key>/predictions.npz          a cell's per-image predictions (benchmark.predictions),
        cells/<key>/metrics.json, error.txt  its metrics, or the traceback of a failed try
        attacks/<key>/                       what an attack derives at some cost (BadCLIP's patch)

Every folder name is a content key (16 hex digits), never a name a plugin, a preset or a results file chose. A
results row names its cell's folder in ``cache_key`` (``cell_id`` in rows written before that column, and the
two differ in a sweep): :func:`cell_folder_key` reads it. This module imports neither torch nor the runner, so
the leaderboard (which only reads files) can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from benchmark.predictions import FILENAME as PREDICTIONS_FILE

CACHE_DIR = "cache"  # a run folder's cache, beside its results.csv
CELLS_DIR = "cells"
METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
_KEY = re.compile(r"[0-9a-f]{16}")
_Layout = TypeVar("_Layout", bound="CacheLayout")


def is_cache_key(text: object) -> bool:
    """Whether ``text`` is a cache key (16 hex digits), so a folder may be named after it."""
    return isinstance(text, str) and _KEY.fullmatch(text) is not None


def folder_name(key: str) -> str:
    """``key`` itself, checked to be a content hash: folder names are never built from names a plugin, a preset or
    a results file chose, so nothing written here can land outside the cache (``..``, ``/``, absolute paths)."""
    if not is_cache_key(key):
        raise ValueError(f"{key!r} is not a cache key (16 hex digits)")
    return key


def cell_folder_key(row: Mapping[str, Any]) -> str | None:
    """The key of the cache folder holding a results row's metrics and predictions: its ``cache_key``, or in rows
    written before that column (empty there) its ``cell_id``; None when neither is a cache key (a hand-made or
    foreign row names no folder). In a sweep the two differ: ``cell_id`` is the row's, ``cache_key`` the cell's
    that several sweep points share."""
    cache_key = row.get("cache_key")
    if is_cache_key(cache_key):
        return cache_key
    cell_id = row.get("cell_id")
    return cell_id if is_cache_key(cell_id) else None


def cell_predictions_member(key: str) -> str:
    """Where a cell's predictions lie inside a run folder, as a relative ``/`` path (a bundle's member name)."""
    return f"{CACHE_DIR}/{CELLS_DIR}/{folder_name(key)}/{PREDICTIONS_FILE}"


class CacheLayout:
    """The paths of a cache rooted at ``root`` (a run folder's ``cache/``: :meth:`of_run`); nothing is read or
    written here."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_run(cls: type[_Layout], out: str | Path) -> _Layout:
        """The cache of the run folder ``out`` (the folder holding ``results.csv``)."""
        return cls(Path(out) / CACHE_DIR)

    @property
    def victims_dir(self) -> Path:
        return self.root / "victims"

    def victim_dir(self, key: str) -> Path:
        return self.victims_dir / folder_name(key)

    @property
    def attacks_dir(self) -> Path:
        """Where attacks cache what they derive at some cost (BadCLIP's patch), each under its own content key."""
        return self.root / "attacks"

    def cell_dir(self, key: str) -> Path:
        return self.root / CELLS_DIR / folder_name(key)

    def cell_predictions_path(self, key: str) -> Path:
        """The per-image predictions of the cell ``key`` (:mod:`benchmark.predictions`)."""
        return self.cell_dir(key) / PREDICTIONS_FILE

    def cell_metrics_path(self, key: str) -> Path:
        return self.cell_dir(key) / METRICS_FILE

    def cell_error_path(self, key: str) -> Path:
        """The traceback of the cell's last failed try (removed once it succeeds)."""
        return self.cell_dir(key) / ERROR_FILE

    def pretrained_dir(self, key: str) -> Path:
        """The clean pretrained model ``key`` (``model.safetensors`` and ``meta.json``), shared by a run's victims."""
        return self.root / "pretrained" / folder_name(key)

    def row_predictions_path(self, row: Mapping[str, Any]) -> Path | None:
        """The predictions file of a results row's cell (:func:`cell_folder_key`); None when the row names no
        cache folder. The file need not exist (runs from before predictions, failed cells)."""
        key = cell_folder_key(row)
        return None if key is None else self.cell_predictions_path(key)
