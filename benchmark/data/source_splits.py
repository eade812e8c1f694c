"""Disjoint splits of a preset's data sources: victim-training and clean pairs from ``data.train``; validation
and test images from ``data.eval``.

Each source is shuffled by a generator seeded with ``split_seed`` and cut into consecutive runs, so the splits
are disjoint, independent of the run's seed, and the same on every machine that holds the same files. The test
images are a random subset when ``test_images`` is set (never the first folders of a sorted ImageFolder).
Validation images come from the evaluation set, disjoint from the test images (0 by default in the paper's
presets: CleanCLIP selects no model on validation data).

Which path a pair split takes: decoded into memory when ``pairs × 3 × image_size²`` bytes fit in
``data.memory_gb``, else streamed (:class:`~benchmark.data.loader.StreamingPairs`). Evaluation sets are
always held in memory (zero-shot evaluation reads them twice: clean and triggered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.data.loader import BadImageBudget, StreamingPairs, materialise
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.data.formats import open_source
from benchmark.errors import UserError
from benchmark.presets import DataSpec, Preset

GB = 1e9


@dataclass(frozen=True)
class SplitPlan:
    """How many items each split takes and whether it is streamed; known without decoding anything."""

    train_pairs: int
    clean_pairs: int
    val_images: int
    test_images: int
    source_pairs: int
    source_images: int
    streamed: tuple[str, ...]


def split_bytes(count: int, data: DataSpec) -> float:
    return count * 3 * data.image_size**2


def plan_splits(data: DataSpec, pair_count: int, image_count: int) -> SplitPlan:
    """Check the requested sizes against the sources' counts; which pair splits stream."""
    needed = data.train_pairs + data.clean_pairs
    if needed > pair_count:
        raise UserError(f"data.train_pairs + data.clean_pairs = {needed} exceeds the {pair_count} pairs in "
                        f"{data.train.path}")
    available = image_count - data.val_pairs
    test = data.test_images or available
    if available < 1 or test > available:
        raise UserError(f"data.val_pairs + data.test_images = {data.val_pairs + test} exceeds the {image_count} "
                        f"images in {data.eval.path}")
    if split_bytes(data.val_pairs + test, data) > data.memory_gb * GB:
        raise UserError(f"the evaluation images ({data.val_pairs + test} at {data.image_size} px = "
                        f"{split_bytes(data.val_pairs + test, data) / GB:.1f} GB) exceed data.memory_gb = "
                        f"{data.memory_gb}: raise it or lower data.test_images")
    return SplitPlan(data.train_pairs, data.clean_pairs, data.val_pairs, test, pair_count, image_count,
                     streamed_splits(data))


def streamed_splits(data: DataSpec) -> tuple[str, ...]:
    """The pair splits ("train", "clean") too large for ``data.memory_gb``, which are streamed."""
    if not data.uses_sources:
        return ()
    return tuple(name for name, count in (("train", data.train_pairs), ("clean", data.clean_pairs))
                 if split_bytes(count, data) > data.memory_gb * GB)


@dataclass
class SourceSplits:
    """The four parts of a preset with data sources."""

    train_pairs: PairSet | StreamingPairs
    clean_pairs: PairSet | StreamingPairs
    val_set: EvalSet
    test_set: EvalSet
    budget: BadImageBudget


def build_source_splits(preset: Preset) -> SourceSplits:
    """Open, split and decode (or prepare to stream) a resolved preset's sources."""
    data, text = preset.data, preset.text
    pairs, images = open_source(data.train, "train"), open_source(data.eval, "eval")
    plan = plan_splits(data, len(pairs), len(images))
    generator = torch.Generator().manual_seed(data.split_seed)
    pair_order = torch.randperm(len(pairs), generator=generator).numpy()
    image_order = torch.randperm(len(images), generator=generator).numpy()
    budget = BadImageBudget(data.max_bad_images)

    def pair_split(name: str, start: int, count: int) -> PairSet | StreamingPairs:
        positions = np.sort(pair_order[start : start + count])  # sorted: sequential reads on disk
        if name in plan.streamed:
            return StreamingPairs(pairs, positions, data.image_size, data.workers, budget)
        return materialise(pairs, positions, data.image_size, data.workers, budget)

    def eval_split(start: int, count: int) -> EvalSet:
        decoded = materialise(images, np.sort(image_order[start : start + count]), data.image_size,
                              data.workers, budget)
        return EvalSet(decoded.images, decoded.labels, list(text.classnames), list(text.eval_templates))

    return SourceSplits(
        train_pairs=pair_split("train", 0, plan.train_pairs),
        clean_pairs=pair_split("clean", plan.train_pairs, plan.clean_pairs),
        val_set=eval_split(0, plan.val_images),
        test_set=eval_split(plan.val_images, plan.test_images),
        budget=budget,
    )
