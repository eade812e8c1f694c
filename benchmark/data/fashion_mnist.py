"""Fashion-MNIST (Xiao et al. 2017), found locally first and downloaded only as a last resort.

Search order: a directory of the standard IDX files that the user names, Debian's ``dataset-fashion-mnist``
package, then the Hugging Face hub (``zalando-datasets/fashion_mnist``) when there is a network.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HF_NAME = "zalando-datasets/fashion_mnist"
ENV_DIR = "CLEANBENCH_FASHION_MNIST_DIR"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """Grayscale images (N, 28, 28) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Split]:
    """The train (60k) and test (10k) splits, from the first source that has them."""
    user_dir = data_dir or os.environ.get(ENV_DIR)
    tried = []
    for directory in ([Path(user_dir)] if user_dir else []) + [DEBIAN_DIR]:
        if _has_idx_files(directory):
            return {split: _read_split(directory, *names) for split, names in _FILES.items()}
        tried.append(str(directory))
    try:
        return _load_from_hub()
    except Exception as error:  # noqa: BLE001 - any hub failure means "not available here"
        hub_error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    user_hint = f"the directory you named ({user_dir})" if user_dir else f"a directory you name (--data-dir or ${ENV_DIR})"
    raise UserError(
        f"Fashion-MNIST not found. Looked in {user_hint}, in Debian's package dir {DEBIAN_DIR} "
        f"(apt-get install dataset-fashion-mnist), and on the Hugging Face hub as {HF_NAME} ({hub_error})."
    )


def _has_idx_files(directory: Path) -> bool:
    return all(_find(directory, name) is not None for names in _FILES.values() for name in names)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # unreadable, or a corrupt/cut-short gzip stream
        raise UserError(f"{path} cannot be read: {type(error).__name__}: {error}") from None
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise UserError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data, found {payload.size}")
    return payload.reshape(shape)


def _read_split(directory: Path, images_stem: str, labels_stem: str) -> Split:
    images = _read_idx(_find(directory, images_stem))
    labels = _read_idx(_find(directory, labels_stem))
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def _load_from_hub() -> dict[str, Split]:
    import datasets

    dataset = datasets.load_dataset(HF_NAME)
    splits = {}
    for split in ("train", "test"):
        part = dataset[split].with_format("numpy")
        images = np.stack([np.asarray(image, dtype=np.uint8) for image in part["image"]])
        splits[split] = Split(torch.from_numpy(images), torch.from_numpy(part["label"].astype(np.int64)))
    return splits
