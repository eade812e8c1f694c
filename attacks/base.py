"""The ``Attack`` contract every backdoor attack implements, built-in or plugin.

An attack has two jobs: ``apply`` adds its trigger to a batch of float images in [0, 1] (used both to poison
training pairs and to trigger test images for ASR), and ``poison`` picks which training pairs to change and
rewrites them, returning a manifest of exactly what changed. ``poison`` is ``select`` (which pairs) followed by
``poison_selected`` (those pairs changed), so a split streamed from disk is poisoned by the same code: only the
chosen pairs are decoded (:mod:`benchmark.poisoning`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from benchmark.config import build_config, config_dict
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet, to_float, to_uint8
from benchmark.errors import UserError


@dataclass(frozen=True)
class PoisonTarget:
    """The class the backdoor should map to, and a way to write captions that name it."""

    index: int
    name: str
    caption: Callable[[torch.Generator], str]
    synonyms: tuple[str, ...] = ()  # other phrases that name the target in captions (label-consistent selection)


@dataclass
class PoisonManifest:
    """Exactly what an attack changed: which pairs, their old and new captions, and the attack's settings."""

    attack: str
    version: str
    config: dict[str, Any]
    seed: int
    target: str
    indices: list[int]
    captions_before: list[str]
    captions_after: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AttackContext:
    """What an attack may use besides the pairs it poisons (e.g. a surrogate model trained on clean data).

    The runner fills every field. An attack that derives something costly from them (BadCLIP's optimised patch)
    stores it under ``cache_dir``, keyed with ``clean_data_key`` (what the clean pairs are), so that poisoning,
    every cell's evaluation and the gallery share one result; ``cache_dir`` None keeps it in memory only.
    """

    image_size: int
    seed: int
    device: torch.device
    clean_pairs: Pairs | None = None
    model_name: str = ""  # the victim's open_clip architecture, for attacks that train a surrogate of it
    target: PoisonTarget | None = None  # the class the backdoor maps to, for a trigger optimised towards it
    cache_dir: Path | None = None  # the run's cache of attack artifacts (``<out>/cache/attacks``)
    clean_data_key: str = ""  # a content key of the clean pairs (data and text settings); "" when unknown


class Attack(ABC):
    """Base class: subclasses set ``name``, ``version``, a frozen ``Config`` dataclass and implement ``apply``.

    The default ``poison`` is the dirty-label recipe of CleanCLIP (reference §1): choose ``count`` pairs
    uniformly at random, apply the trigger, and replace each caption with a fresh caption naming the target.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = object
    dirty_label: ClassVar[bool] = True
    # Whether poisoning reads ``context.clean_pairs`` (a surrogate trained on them, a patch optimised on them): the
    # victim's cache key then records the clean split's size. False lets a ``data.clean_pairs`` sweep share the
    # attack's victims; the conformance check ``clean-pairs-declared`` verifies it.
    uses_clean_pairs: ClassVar[bool] = True

    def __init__(self, config: Any = None, *, context: AttackContext) -> None:
        self.config = config if config is not None else self.Config()
        self.context = context
        self.setup()

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, *, context: AttackContext) -> "Attack":
        """Build from the attack's config settings (a preset's poison keys are split off before:
        :func:`benchmark.presets.split_attack_settings`)."""
        return cls(build_config(cls.Config, settings, f"attacks.{cls.name}"), context=context)

    def setup(self) -> None:
        """Draw whatever is fixed for this attack instance (a pattern, a warp field) from ``context.seed``."""

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Add the trigger to float images (B, C, H, W) in [0, 1]; same shape, dtype and range."""

    def select(self, pairs: Pairs, target: PoisonTarget, count: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of the pairs to poison: ``count`` drawn uniformly at random.

        ``pairs`` may be streamed (:class:`~benchmark.data.loader.StreamingPairs`): an override may read its
        ``captions`` and ``labels``, never its images (those are decoded for the chosen pairs only).
        """
        if count > len(pairs):
            raise UserError(f"poison count {count} is larger than the {len(pairs)} training pairs")
        return torch.randperm(len(pairs), generator=generator)[:count].sort().values

    def poison(self, pairs: PairSet, target: PoisonTarget, count: int, generator: torch.Generator) -> tuple[PairSet, PoisonManifest]:
        """A poisoned copy of ``pairs`` and the manifest of what changed: :meth:`select`, then
        :meth:`poison_selected` on the chosen pairs, written back into the copy."""
        indices = self.select(pairs, target, count, generator)
        changed, manifest = self.poison_selected(pairs.subset(indices), indices, target, generator)
        poisoned = pairs.copy()
        if len(indices):
            poisoned.images[indices] = changed.images
        for i, caption in zip(indices.tolist(), changed.captions):
            poisoned.captions[i] = caption
        return poisoned, manifest

    def poisons_selected_only(self) -> bool:
        """Whether :meth:`poison` changes nothing but what :meth:`select` and :meth:`poison_selected` change, so a
        streamed split (whose other pairs are never in memory) can be poisoned. An attack that overrides
        ``poison`` says when this still holds."""
        return type(self).poison is Attack.poison

    def poison_selected(self, chosen: PairSet, indices: torch.Tensor, target: PoisonTarget,
                        generator: torch.Generator) -> tuple[PairSet, PoisonManifest]:
        """The chosen pairs (``indices`` in their split) poisoned, and the manifest. This is all the poisoning a
        streamed split needs: the runner decodes just these pairs and swaps the result into its batches.

        The default applies the trigger and, for dirty-label attacks, draws a fresh caption naming the target.
        """
        images = chosen.images.clone()
        if len(indices):
            images = to_uint8(self.apply(to_float(chosen.images), generator))
        before = list(chosen.captions)
        after = [target.caption(generator) for _ in before] if self.dirty_label else list(before)
        return PairSet(images, after, chosen.labels.clone()), self.manifest(indices, target, before, after)

    def manifest(self, indices: torch.Tensor, target: PoisonTarget, before: list[str], after: list[str],
                 extra: dict[str, Any] | None = None) -> PoisonManifest:
        """The manifest of poisoning ``indices``, with this attack's name, version, config and seed."""
        return PoisonManifest(self.name, self.version, config_dict(self.config), self.context.seed, target.name,
                              indices.tolist(), before, after, dict(extra or {}))


def target_pair_indices(pairs: Pairs, target: PoisonTarget) -> torch.Tensor:
    """Indices of the pairs that belong to the target: label is the target, or the caption names it or a synonym
    (a case-sensitive substring test, as the CleanCLIP code's ``"banana" in caption``). Reads captions and labels
    only, never images."""
    names = (target.name, *target.synonyms)
    eligible = torch.tensor([int(label) == target.index or any(name in caption for name in names)
                             for caption, label in zip(pairs.captions, pairs.labels.tolist())], dtype=torch.bool)
    return torch.nonzero(eligible).squeeze(1)
