"""The checks of an attack: ``apply`` keeps shape, dtype and the [0, 1] range and leaves its input alone;
``poison`` leaves its input pairs alone and returns pairs and a manifest; the same seed gives the same images,
captions and manifest; an attack that declares it does not read the clean pairs (``uses_clean_pairs = False``)
poisons the same without them, since its victims' keys leave their size out.

Determinism is checked with torch's global generator in a different state for each of the two runs: the
runner hands an attack its generator (and ``context.seed`` for what ``setup`` draws), and an attack that draws
from anywhere else (an unseeded ``torch.rand``) would poison differently each time the cell is rebuilt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from attacks.base import Attack, AttackContext, PoisonManifest
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
    checked = _AttackRuns(cls, settings, attack_context(preset, task, SEED, torch.device("cpu"), cache_dir),
                          task.train_pairs.subset(torch.arange(min(PAIRS, len(task.train_pairs)))))
    frozen, toml = config_checks(cls, settings, f"attacks.{cls.name}")
    checks: list[tuple[str, Any]] = [
        ("metadata", lambda: metadata_check(cls, "attack")), ("config-frozen", frozen), ("config-toml", toml),
        ("apply-keeps-shape-dtype-range", checked.shape_dtype_range), ("leaves-input-untouched", checked.leaves_input),
        ("poison-returns-pairs-and-manifest", checked.poison_result), ("deterministic", checked.deterministic),
        ("clean-pairs-declared", checked.clean_pairs_declared)]
    return [attempt(cls.name, check, run) for check, run in checks]


class _AttackRuns:
    """Fresh instances of the attack built as the runner builds them, and the checks of what they return."""

    def __init__(self, cls: type[Attack], settings: dict[str, Any], context: AttackContext, pairs: PairSet) -> None:
        self.cls, self.settings, self.context, self.pairs = cls, settings, context, pairs
        self.images = to_float(pairs.images[:IMAGES])

    def build(self) -> Attack:
        return self.cls.from_settings(self.settings, context=self.context)

    def trigger(self, attack: Attack, images: torch.Tensor) -> torch.Tensor:
        return attack.apply(images, torch.Generator().manual_seed(1))

    def poison(self, attack: Attack, pairs: PairSet) -> tuple[PairSet, PoisonManifest]:
        return attack.poison(pairs, self.context.target, COUNT, torch.Generator().manual_seed(2))

    def shape_dtype_range(self) -> str | None:
        images = self.images
        out = self.trigger(self.build(), images.clone())
        if not isinstance(out, torch.Tensor):
            return f"apply returned {type(out).__name__}, not a tensor"
        if out.shape != images.shape or out.dtype != images.dtype:
            return f"apply turned {_describe(images)} into {_describe(out)}: keep the shape and dtype"
        if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            return f"apply returned values in [{out.min().item():.3g}, {out.max().item():.3g}]: keep them in [0, 1]"
        return None

    def leaves_input(self) -> str | None:
        given, attack = self.images.clone(), self.build()
        self.trigger(attack, given)
        if not torch.equal(given, self.images):
            return (f"apply changed {int((given != self.images).sum())} values of its input images in place: "
                    "write into a copy (images.clone())")
        given_pairs = self.pairs.copy()
        self.poison(attack, given_pairs)
        if not _same_pairs(given_pairs, self.pairs):
            return "poison changed the pairs it was given: change a copy (pairs.copy())"
        return None

    def poison_result(self) -> str | None:
        poisoned, manifest = self.poison(self.build(), self.pairs.copy())
        if not isinstance(poisoned, PairSet) or len(poisoned) != len(self.pairs):
            return f"poison returned {type(poisoned).__name__} of {len(poisoned)} pairs for {len(self.pairs)} pairs"
        if not isinstance(manifest, PoisonManifest) or len(manifest.indices) != COUNT:
            return f"poison's manifest should be a PoisonManifest naming the {COUNT} pairs asked for"
        return None

    def deterministic(self) -> str | None:
        runs = []
        for global_seed in (11, 12):
            torch.manual_seed(global_seed)  # an attack that draws from the global generator differs between runs
            runs.append(self.outputs())
        (first, poisoned_a, manifest_a), (second, poisoned_b, manifest_b) = runs
        if not torch.equal(first, second):
            return ("two runs with the same seed triggered the same images differently: draw randomness from the "
                    "generator passed to apply (and from context.seed in setup), not torch's global generator")
        if not _same_pairs(poisoned_a, poisoned_b) or manifest_a != manifest_b:
            return ("two runs with the same seed poisoned differently: draw randomness from the generator passed "
                    "to poison, not torch's global generator")
        return None

    def clean_pairs_declared(self) -> str | None:
        if self.cls.uses_clean_pairs:
            return None
        blind = _AttackRuns(self.cls, self.settings, dataclasses.replace(self.context, clean_pairs=None,
                                                                          clean_data_key=""), self.pairs)
        fix = ("it declares uses_clean_pairs = False, so its victims are shared across clean-split sizes: "
               "set uses_clean_pairs = True")
        try:
            (images, pairs, manifest), (blind_images, blind_pairs, blind_manifest) = self.outputs(), blind.outputs()
        except Exception as error:  # noqa: BLE001 - any failure without the clean pairs means it reads them
            return f"poisoning failed without context.clean_pairs ({type(error).__name__}: {error}); {fix}"
        if not (torch.equal(images, blind_images) and _same_pairs(pairs, blind_pairs) and manifest == blind_manifest):
            return f"poisoning changed without context.clean_pairs; {fix}"
        return None

    def outputs(self) -> tuple[torch.Tensor, PairSet, dict[str, Any]]:
        """What one freshly built instance triggers and poisons."""
        attack = self.build()
        poisoned, manifest = self.poison(attack, self.pairs.copy())
        return self.trigger(attack, self.images.clone()), poisoned, manifest.to_json()


def _describe(images: torch.Tensor) -> str:
    return f"{tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}"


def _same_pairs(a: PairSet, b: PairSet) -> bool:
    return torch.equal(a.images, b.images) and list(a.captions) == list(b.captions) and torch.equal(a.labels, b.labels)
