"""Per-image predictions of a cell, kept beside its metrics so two defenses can be compared image by image.

The habit is lm-evaluation-harness's ``--log_samples``: a mean hides which images changed, a paired test needs
them. Every cell writes ``cache/cells/<cell_id>/predictions.npz`` (NumPy, compressed) next to its
``metrics.json``; the leaderboard reads it (:mod:`leaderboard.compare`) to run exact McNemar tests between
defenses applied to the same victim. Result folders written before predictions existed have no such file and
still aggregate; their pairs are compared over seeds only.

Arrays (the schema of the file, documented here and nowhere else):

=================  ===========  ===================================================================================
``format``         int, ()      version of this layout (``FORMAT_VERSION``)
``n_classes``      int, ()      number of classes of the zero-shot classifier (chance accuracy = 1 / n_classes)
``target``         int, ()      the attack's target class; ``-1`` for the benign control (nothing triggered)
``clean_label``    int16, (N,)  true class of each clean test image, in test-set order
``clean_pred``     int16, (N,)  top-1 class the defended model gives each clean test image (CA = mean of equal)
``triggered_index`` int32, (M,) test-set index of each non-target image that was triggered (empty for the control)
``triggered_pred`` int16, (M,)  top-1 class of that image with the trigger applied (ASR = mean of ``== target``)
=================  ===========  ===================================================================================

Files are read with ``allow_pickle=False`` and checked for shapes and ranges, so a file from someone else's run
can neither run code nor pass as predictions it is not.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.storage import atomic_path

FILENAME = "predictions.npz"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 << 20  # a 1M-image test set takes ~4 MB; anything far larger is not a predictions file


class PredictionsError(ValueError):
    """A predictions file that is unreadable or inconsistent (the leaderboard then ignores it, with a note)."""


@dataclass(frozen=True)
class Predictions:
    """Top-1 predictions of one cell on the clean test set and on the triggered non-target test images."""

    n_classes: int
    target: int
    clean_label: np.ndarray
    clean_pred: np.ndarray
    triggered_index: np.ndarray
    triggered_pred: np.ndarray

    @property
    def clean_correct(self) -> np.ndarray:
        """Boolean per clean test image: classified correctly."""
        return self.clean_pred == self.clean_label

    @property
    def triggered_success(self) -> np.ndarray:
        """Boolean per triggered non-target image: classified as the target (the attack succeeded)."""
        return self.triggered_pred == self.target

    def save(self, path: Path) -> None:
        """Write the ``.npz`` atomically (a kill leaves the old file or none, never a torn one)."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, format=np.int64(FORMAT_VERSION), n_classes=np.int64(self.n_classes),
                                target=np.int64(self.target), clean_label=self.clean_label.astype(np.int16),
                                clean_pred=self.clean_pred.astype(np.int16),
                                triggered_index=self.triggered_index.astype(np.int32),
                                triggered_pred=self.triggered_pred.astype(np.int16))


def load_predictions(path: Path) -> Predictions:
    """Read and check a predictions file; :class:`PredictionsError` says what is wrong with it."""
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise PredictionsError(f"{path}: {path.stat().st_size} bytes, larger than any predictions file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise PredictionsError(f"{path}: not a readable predictions file ({error})") from None
    expected = {"format", "n_classes", "target", "clean_label", "clean_pred", "triggered_index", "triggered_pred"}
    if set(arrays) != expected:
        raise PredictionsError(f"{path}: arrays {sorted(arrays)}, expected {sorted(expected)}")
    if int(arrays["format"]) != FORMAT_VERSION:
        raise PredictionsError(f"{path}: format {int(arrays['format'])}, this cleanbench reads {FORMAT_VERSION}")
    predictions = Predictions(int(arrays["n_classes"]), int(arrays["target"]), arrays["clean_label"],
                              arrays["clean_pred"], arrays["triggered_index"], arrays["triggered_pred"])
    _check(path, predictions)
    return predictions


def _check(path: Path, p: Predictions) -> None:
    for name in ("clean_label", "clean_pred", "triggered_index", "triggered_pred"):
        array = getattr(p, name)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise PredictionsError(f"{path}: {name} must be a 1-D integer array")
    if p.clean_label.shape != p.clean_pred.shape or p.triggered_index.shape != p.triggered_pred.shape:
        raise PredictionsError(f"{path}: labels and predictions differ in length")
    if p.n_classes < 1 or not -1 <= p.target < p.n_classes:
        raise PredictionsError(f"{path}: target {p.target} outside the {p.n_classes} classes")
    for name in ("clean_label", "clean_pred", "triggered_pred"):
        array = getattr(p, name)
        if len(array) and (array.min() < 0 or array.max() >= p.n_classes):
            raise PredictionsError(f"{path}: {name} holds a class outside 0..{p.n_classes - 1}")
    index = p.triggered_index
    if len(index) and (index.min() < 0 or index.max() >= len(p.clean_label)):
        raise PredictionsError(f"{path}: triggered_index points outside the {len(p.clean_label)} test images")
