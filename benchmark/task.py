"""A preset's data made concrete: disjoint victim-training pairs, clean defense pairs, validation and test sets,
and for a preset whose victims start from a clean model trained here, that model's pretraining pairs.

The split and the captions depend only on the preset (``split_seed``), never on the run's seed, so every cell
of a grid sees the same clean pairs and the same test set. Two kinds of preset: the built-in Fashion-MNIST
(captions generated from the labels) and presets with data sources (CSV, WebDataset, Hugging Face pairs;
ImageFolder, ImageNet, Hugging Face evaluation sets), split in :mod:`benchmark.data.source_splits`.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F

from benchmark.data.captions import CaptionWriter
from benchmark.data.fashion_mnist import load_fashion_mnist
from benchmark.data.loader import StreamingPairs
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.config import config_dict
from benchmark.errors import UserError
from benchmark.presets import Preset
from benchmark.seeding import derive_seed
from benchmark.storage import content_key

DATASETS = ("fashion-mnist",)
# Where the pretraining pairs lie (part of the clean model's cache key): the last ``[pretrain] pairs`` of the
# permutation, captioned from a generator of their own, so the sizes of the other splits do not move them and a
# ``data.clean_pairs`` sweep keeps one clean model.
PRETRAIN_SPLIT = "the end of the permutation, own caption generator"


@dataclass
class Task:
    """Everything the grid's cells share for one preset."""

    preset: Preset  # resolved: data paths expanded, class names filled in from the evaluation set
    train_pairs: PairSet | StreamingPairs  # streamed when too large for memory (see source_splits)
    clean_pairs: PairSet | StreamingPairs
    val_set: EvalSet
    test_set: EvalSet
    captions: CaptionWriter
    # The clean model's pairs (:attr:`benchmark.presets.Preset.trains_clean_model`), disjoint from every other
    # split; None when the victims do not start from a model trained here.
    pretrain_pairs: PairSet | None = None

    @property
    def target_index(self) -> int:
        return self.preset.target_index


_TASKS: dict[str, Task] = {}


def build_task(preset: Preset) -> Task:
    """Load and split the preset's dataset; memoised on what determines it (data and text specs)."""
    if preset.data.uses_sources:
        from benchmark.data.resolve import resolve_preset

        preset = resolve_preset(preset)
    pretrain = (pretrain_pair_count(preset),) if pretrain_pair_count(preset) else ()
    key = content_key(config_dict(preset.data), config_dict(preset.text), *pretrain)
    if key not in _TASKS:
        _TASKS.clear()  # keep at most one materialised dataset in memory
        _TASKS[key] = _from_sources(preset) if preset.data.uses_sources else _materialise(preset)
    return _TASKS[key]


def pretrain_pair_count(preset: Preset) -> int:
    """How many pretraining pairs the task holds: ``[pretrain] pairs`` when the victims start from a clean model
    trained here, else 0 (data sources have no pretraining split: their pretrained victims start from weights)."""
    return preset.pretrain.pairs if preset.trains_clean_model and not preset.data.uses_sources else 0


def _from_sources(preset: Preset) -> Task:
    from benchmark.data.source_splits import build_source_splits

    splits = build_source_splits(preset)
    return Task(preset, splits.train_pairs, splits.clean_pairs, splits.val_set, splits.test_set,
                CaptionWriter(preset.text.caption_templates, preset.text.synonyms))


def _materialise(preset: Preset) -> Task:
    data = preset.data
    if data.dataset not in DATASETS:
        raise UserError(f"data.dataset = {data.dataset!r} is not supported; choose one of: {', '.join(DATASETS)}")
    splits = load_fashion_mnist(data.data_dir or None)
    train, test = splits["train"], splits["test"]
    if len(test.labels) == 0 or len(train.labels) == 0:  # before the size checks: "empty" is the clearer message
        raise UserError(f"dataset {data.dataset} is empty: {len(train.labels)} training and {len(test.labels)} "
                        "test images")
    needed = data.train_pairs + data.clean_pairs + data.val_pairs
    if needed > len(train.labels):
        raise UserError(
            f"data.train_pairs + data.clean_pairs + data.val_pairs = {needed} exceeds the "
            f"{len(train.labels)} training images of {data.dataset}"
        )
    pretrain_count = pretrain_pair_count(preset)
    if needed + pretrain_count > len(train.labels):
        raise UserError(f"pretrain.pairs = {pretrain_count} is out of range: with data.train_pairs + data.clean_pairs "
                        f"+ data.val_pairs = {needed}, {data.dataset}'s {len(train.labels)} training images leave "
                        f"{len(train.labels) - needed} for pretraining")
    if data.test_images > len(test.labels):
        raise UserError(f"data.test_images = {data.test_images} exceeds the {len(test.labels)} test images")
    if not preset.text.classnames:
        raise UserError(f"preset {preset.name}: {data.dataset} needs text.classnames, synonyms and templates")

    generator = torch.Generator().manual_seed(data.split_seed)
    order = torch.randperm(len(train.labels), generator=generator)
    parts = torch.split(order[:needed], [data.train_pairs, data.clean_pairs, data.val_pairs])
    writer = CaptionWriter(preset.text.caption_templates, preset.text.synonyms)
    text = preset.text

    def pairs(indices: torch.Tensor, captions_from: torch.Generator = generator) -> PairSet:
        labels = train.labels[indices]
        return PairSet(_prepare(train.images[indices], data.image_size), writer.captions(labels, captions_from),
                       labels)

    test_count = data.test_images or len(test.labels)
    val_idx = parts[2]
    train_pairs, clean_pairs = pairs(parts[0]), pairs(parts[1])
    # PRETRAIN_SPLIT: drawing nothing from the shared generator, it changes no other split (nor any key or artifact
    # of a preset without it).
    pretrain_pairs = pairs(order[len(order) - pretrain_count:], torch.Generator().manual_seed(
        derive_seed(data.split_seed, "pretrain captions"))) if pretrain_count else None
    return Task(
        preset=preset,
        train_pairs=train_pairs,
        clean_pairs=clean_pairs,
        val_set=EvalSet(_prepare(train.images[val_idx], data.image_size), train.labels[val_idx],
                        list(text.classnames), list(text.eval_templates)),
        test_set=EvalSet(_prepare(test.images[:test_count], data.image_size), test.labels[:test_count].clone(),
                         list(text.classnames), list(text.eval_templates)),
        captions=writer,
        pretrain_pairs=pretrain_pairs,
    )


def _prepare(gray: torch.Tensor, size: int) -> torch.Tensor:
    """Grayscale (N, h, w) uint8 to RGB (N, 3, size, size) uint8, resized bilinearly once up front."""
    images = gray.unsqueeze(1).float()
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
