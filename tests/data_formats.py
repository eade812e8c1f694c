"""Builders of tiny datasets in every format cleanbench reads, written at test time (no files checked in).

Three classes of synthetic pictures with a class colour and noise, of varied sizes (so resize and crop run),
named so that ImageNet's ``banana`` (index 954) is among them.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"banana": (230, 210, 40), "granny_smith": (60, 190, 60), "lemon": (250, 240, 120)}
IMAGENET_INDEX = {"banana": 954, "granny_smith": 948, "lemon": 951}


def picture(label: int, number: int) -> Image.Image:
    """A ``label``-coloured picture with noise; a little wider or taller than square, depending on ``number``."""
    rng = np.random.default_rng(number)
    colour = np.array(list(CLASSES.values())[label], dtype=np.float64)
    height, width = (40, 52) if number % 2 else (56, 44)
    pixels = colour + rng.normal(0, 25, size=(height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def caption(label: int) -> str:
    return f"a photo of a {list(CLASSES)[label].replace('_', ' ')}."


def labelled(count: int) -> list[tuple[Image.Image, int]]:
    return [(picture(i % len(CLASSES), i), i % len(CLASSES)) for i in range(count)]


def write_csv(root: Path, count: int, *, corrupt: int = 0, missing: int = 0) -> Path:
    """CleanCLIP's layout: ``train.csv`` with ``image,caption`` rows, paths relative to the CSV."""
    (root / "images").mkdir(parents=True)
    rows = ["image,caption"]
    for number, (image, label) in enumerate(labelled(count)):
        name = f"images/{number:05d}.png"
        if number < corrupt:
            (root / name).write_bytes(b"\x89PNG not really")
        elif number >= count - missing:
            pass  # listed, but the file was never downloaded
        else:
            image.save(root / name)
        rows.append(f'{name},"{caption(label)}"')
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def write_webdataset(root: Path, count: int, *, shards: int = 2, corrupt: int = 0) -> Path:
    """img2dataset's layout: ``00000.tar`` … with ``KEY.jpg``, ``KEY.txt``, ``KEY.json`` and ``NNNNN_stats.json``."""
    root.mkdir(parents=True)
    items = labelled(count)
    per_shard = -(-count // shards)
    for shard in range(shards):
        chunk = list(enumerate(items))[shard * per_shard : (shard + 1) * per_shard]
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for number, (image, label) in chunk:
                key = f"{shard:05d}{number:04d}"
                jpg = b"\xff\xd8 broken" if number < corrupt else encoded(image)
                for ext, payload in (("jpg", jpg), ("txt", caption(label).encode()),
                                     ("json", json.dumps({"key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(chunk)}))
    return root


def write_hf_pairs(root: Path, count: int) -> Path:
    import datasets

    items = labelled(count)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [image for image, _ in items],
                                          "caption": [caption(label) for _, label in items]}, features=features)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(root))
    return root


def write_hf_classification(root: Path, count: int) -> Path:
    """A CIFAR-10-like saved dataset: ``img`` + ``label`` (ClassLabel) in a ``test`` split."""
    import datasets

    items = labelled(count)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    dataset = datasets.Dataset.from_dict({"img": [image for image, _ in items], "label": [l for _, l in items]},
                                         features=features)
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(root))
    return root


def write_image_folder(root: Path, count: int) -> Path:
    for number, (image, label) in enumerate(labelled(count)):
        folder = root / list(CLASSES)[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{number:05d}.jpg")
    return root


def write_imagenet(root: Path, count: int) -> Path:
    """1,000 WordNet-id folders (sorted = class index); the pictures go to banana, Granny Smith and lemon."""
    wnids = [f"n{10_000_000 + 7 * i:08d}" for i in range(1000)]
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
    for number, (image, label) in enumerate(labelled(count)):
        image.save(root / wnids[IMAGENET_INDEX[list(CLASSES)[label]]] / f"ILSVRC2012_val_{number:08d}.JPEG", "JPEG")
    return root


def preset_text(train: str, eval_: str, *, target: str = "banana", **data) -> str:
    """A preset TOML for these tiny datasets: the tiny ViT at 32 px, two short recipes, 4 BadNet poisons.

    ``train``/``eval_`` are TOML inline tables (``{format = "csv", path = "..."}``); ``data`` overrides keys of
    the [data] table (sizes, memory_gb, ...).
    """
    sizes = {"image_size": 32, "train_pairs": 32, "clean_pairs": 16, "val_pairs": 6, "workers": 0, **data}
    lines = "\n".join(f"{key} = {value!r}" for key, value in sizes.items())
    return f"""
name = "formats-test"
[data]
train = {train}
eval = {eval_}
{lines}
[model]
name = "cleanbench-vit-tiny"
[text]
target = "{target}"
eval_templates = ["a photo of a {{}}."]
[victim]
epochs = 1
batch_size = 8
lr = 1e-3
[finetune]
epochs = 1
batch_size = 8
lr = 1e-4
[attacks.badnet]
poison_count = 4
"""
