"""The checks of an attack: ``apply`` keeps shape, dtype and the [0, 1] range and leaves its input alone;
``poison`` leaves its input pairs alone and returns pairs and a manifest; the same seed gives the same images,
captions and manifest.

Determinism is checked with torch's global generator in a different state for each of the two runs: the
runner hands an attack its generator (and ``context.seed`` for what ``setup`` draws), and an attack that draws
from anywhere else (an unseeded ``torch.rand``) would poison differently each time the cell is rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attacks.base import Attack, PoisonManifest
from benchmark.conformance.common import SEED, CheckResult, attempt, config_checks, metadata_check
from benchmark.data.pairs import PairSet, to_float
from benchmark.presets import Preset, split_attack_settings
from benchmark.runner.plan import attack_context
from benchmark.task import Task

IMAGES = 16  # images triggered by the apply checks
PAIRS = 200  # pairs handed to poison (with enough of the target class for a label-consistent attack)
COUNT = 5  # pairs poisoned


def check_attack(cls: type[Attack], preset: Preset, task: Task, cache_dir: Path) -> list[CheckResult]:
    """Every check of the attack ``cls`` on ``preset`` (its ``[attacks.NAME]`` settings) and its data; what the
    attack derives at some cost (BadCLIP's optimised patch) is cached in ``cache_dir``, as a run caches it."""
    _, settings = split_attack_settings(preset.attacks.get(cls.name))
    name = cls.name
    context = attack_context(preset, task, SEED, torch.device("cpu"), cache_dir)  # as the runner builds it
    target = context.target
    pairs = task.train_pairs.subset(torch.arange(min(PAIRS, len(task.train_pairs))))
    images = to_float(pairs.images[:IMAGES])

    def build() -> Attack:
        return cls.from_settings(settings, context=context)

    def shape_dtype_range() -> str | None:
        out = build().apply(images.clone(), torch.Generator().manual_seed(1))
        if not isinstance(out, torch.Tensor):
            return f"apply returned {type(out).__name__}, not a tensor"
        if out.shape != images.shape or out.dtype != images.dtype:
            return f"apply turned {_describe(images)} into {_describe(out)}: keep the shape and dtype"
        if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            return f"apply returned values in [{out.min().item():.3g}, {out.max().item():.3g}]: keep them in [0, 1]"
        return None

    def leaves_input() -> str | None:
        given, kept = images.clone(), images.clone()
        attack = build()
        attack.apply(given, torch.Generator().manual_seed(1))
        if not torch.equal(given, kept):
            return (f"apply changed {int((given != kept).sum())} values of its input images in place: write into "
                    "a copy (images.clone())")
        given_pairs = pairs.copy()
        attack.poison(given_pairs, target, COUNT, torch.Generator().manual_seed(2))
        if not _same_pairs(given_pairs, pairs):
            return "poison changed the pairs it was given: change a copy (pairs.copy())"
        return None

    def poison_result() -> str | None:
        poisoned, manifest = build().poison(pairs.copy(), target, COUNT, torch.Generator().manual_seed(2))
        if not isinstance(poisoned, PairSet) or len(poisoned) != len(pairs):
            return f"poison returned {type(poisoned).__name__} of {len(poisoned)} pairs for {len(pairs)} pairs"
        if not isinstance(manifest, PoisonManifest) or len(manifest.indices) != COUNT:
            return f"poison's manifest should be a PoisonManifest naming the {COUNT} pairs asked for"
        return None

    def deterministic() -> str | None:
        runs = []
        for global_seed in (11, 12):
            torch.manual_seed(global_seed)  # an attack that draws from the global generator differs between runs
            attack = build()
            triggered = attack.apply(images.clone(), torch.Generator().manual_seed(1))
            poisoned, manifest = attack.poison(pairs.copy(), target, COUNT, torch.Generator().manual_seed(2))
            runs.append((triggered, poisoned, manifest.to_json()))
        (first, poisoned_a, manifest_a), (second, poisoned_b, manifest_b) = runs
        if not torch.equal(first, second):
            return ("two runs with the same seed triggered the same images differently: draw randomness from the "
                    "generator passed to apply (and from context.seed in setup), not torch's global generator")
        if not _same_pairs(poisoned_a, poisoned_b) or manifest_a != manifest_b:
            return ("two runs with the same seed poisoned differently: draw randomness from the generator passed "
                    "to poison, not torch's global generator")
        return None

    frozen, toml = config_checks(cls, settings, f"attacks.{name}")
    checks: list[tuple[str, Any]] = [
        ("metadata", lambda: metadata_check(cls, "attack")), ("config-frozen", frozen), ("config-toml", toml),
        ("apply-keeps-shape-dtype-range", shape_dtype_range), ("leaves-input-untouched", leaves_input),
        ("poison-returns-pairs-and-manifest", poison_result), ("deterministic", deterministic)]
    return [attempt(name, check, run) for check, run in checks]


def _describe(images: torch.Tensor) -> str:
    return f"{tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}"


def _same_pairs(a: PairSet, b: PairSet) -> bool:
    return torch.equal(a.images, b.images) and list(a.captions) == list(b.captions) and torch.equal(a.labels, b.labels)
