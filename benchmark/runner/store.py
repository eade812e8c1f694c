"""Artifacts on disk under content-hashed keys: victims (checkpoint, poison manifest, meta), the clean model
pretrained victims start from (``pretrained/<key>/``: checkpoint and meta, :mod:`benchmark.runner.pretrained`),
cell metrics and cell predictions (:mod:`benchmark.predictions`), and what attacks derive at some cost
(``attacks/<key>/``, written by the attack itself under its own key, e.g. BadCLIP's patch).

The store owns the cache's layout: its paths are :class:`benchmark.cache_layout.CacheLayout`'s (kept free of
torch for the leaderboard), and a run folder's cache is ``ArtifactStore.of_run(out)``; nothing else spells out
``cache/cells/...``.

A victim (or pretrained model) is complete only once its ``meta.json`` exists, and the meta records the
checkpoint's SHA-256, checked on every load, so a checkpoint cut short by a crash is never used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.cache_layout import CACHE_DIR, CacheLayout, cell_folder_key, cell_predictions_member
from benchmark.predictions import Predictions
from benchmark.storage import sha256_file, write_json_atomic, write_text_atomic

__all__ = ["CACHE_DIR", "ArtifactStore", "CacheLayout", "cell_folder_key", "cell_predictions_member"]


class ArtifactStore(CacheLayout):
    """Reads and writes the cache rooted at ``root`` (a run folder's ``cache/``: ``ArtifactStore.of_run(out)``);
    where each artifact lies is :class:`~benchmark.cache_layout.CacheLayout`'s."""

    def victim_meta(self, key: str) -> dict[str, Any] | None:
        """The victim's meta if the victim is complete and its checkpoint intact, else None (retrain)."""
        return _complete_meta(self.victim_dir(key))

    def save_victim_meta(self, key: str, meta: dict[str, Any]) -> None:
        _save_meta(self.victim_dir(key), meta)

    def pretrained_meta(self, key: str) -> dict[str, Any] | None:
        """The pretrained model's meta if it is complete and its checkpoint intact, else None (train it)."""
        return _complete_meta(self.pretrained_dir(key))

    def save_pretrained_meta(self, key: str, meta: dict[str, Any]) -> None:
        """Written last, after the checkpoint: the model counts as there only from now on."""
        _save_meta(self.pretrained_dir(key), meta)

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The poison manifest saved with the victim ``key`` (None for the benign control, or not saved yet)."""
        return _read_json(self.victim_dir(key) / "poison_manifest.json")

    def save_manifest(self, key: str, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.victim_dir(key) / "poison_manifest.json", manifest)

    def cell_metrics(self, key: str) -> dict[str, Any] | None:
        record = _read_json(self.cell_metrics_path(key))
        return record if record is not None and {"metrics", "timing"} <= set(record) else None

    def save_cell_predictions(self, key: str, predictions: Predictions) -> None:
        """Written before the cell's metrics, so cached metrics always come with their predictions."""
        predictions.save(self.cell_predictions_path(key))

    def save_cell_metrics(self, key: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.cell_metrics_path(key), record)
        self.cell_error_path(key).unlink(missing_ok=True)  # a failed try's traceback, now outdated

    def save_cell_error(self, key: str, text: str) -> Path:
        path = self.cell_error_path(key)
        write_text_atomic(path, text)
        return path


def _complete_meta(folder: Path) -> dict[str, Any] | None:
    """``folder/meta.json`` if it exists and records the SHA-256 of ``folder/model.safetensors``, else None."""
    meta_path, checkpoint = folder / "meta.json", folder / "model.safetensors"
    if not meta_path.exists() or not checkpoint.exists():
        return None
    meta = _read_json(meta_path)
    if meta is None or sha256_file(checkpoint) != meta.get("checkpoint_sha256"):
        return None
    return meta


def _save_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(folder / "meta.json", dict(meta, checkpoint_sha256=sha256_file(folder / "model.safetensors")))


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing or unreadable (damaged on disk: recompute, never trust)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None
