"""The ``Defense`` contract every defense implements, built-in or plugin.

A defense receives the (possibly backdoored) victim and the preset's clean pairs (its budget, disjoint from the
victim's training pairs) and returns a model. The returned model is evaluated zero-shot, unless it brings its
own classifier (:class:`benchmark.metrics.BringsOwnClassifier`), as supervised finetuning does.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.config import build_config
from benchmark.data.loader import Pairs
from benchmark.data.pairs import EvalSet
from benchmark.progress import Reporter
from benchmark.training_recipe import TrainRecipe


@dataclass
class DefenseContext:
    """What a defense may use: device, seed, the recipe it trains with, tokenizer, clean validation data.

    ``recipe`` is already the defense's own: the preset's ``[finetune]`` recipe with the set (non-None) fields of
    the defense's config that are named like :class:`TrainRecipe`'s replacing its values
    (:func:`effective_recipe`). The runner computes it once when it plans the cell and records that same object
    in the cell's row (``defense_recipe``), so a defense trains with ``context.recipe`` as it is.
    """

    device: torch.device
    seed: int
    recipe: TrainRecipe
    tokenizer: Any
    val_set: EvalSet
    reporter: Reporter

    def recipe_with(self, **overrides: Any) -> TrainRecipe:
        """:attr:`recipe` with the set (non-None) ``overrides`` replacing its values. Kept for plugins written
        when the context carried the preset's recipe: passing the config's own recipe fields changes nothing,
        since :attr:`recipe` already has them."""
        return dataclasses.replace(self.recipe, **{k: v for k, v in overrides.items() if v is not None})


def check_recipe_overrides(config: Any) -> None:
    """Range-check a defense config's recipe overrides (fields named like :class:`TrainRecipe`'s) with the
    recipe's own checks, so every defense validates them alike, at plan time, before any training."""
    effective_recipe(TrainRecipe(), config)


def effective_recipe(recipe: TrainRecipe, config: Any) -> TrainRecipe:
    """The recipe a defense trains with: ``recipe`` with the config's set fields of the same names replacing its
    values. The runner's plan computes it once per cell and hands it to the defense as
    :attr:`DefenseContext.recipe`."""
    if not dataclasses.is_dataclass(config):
        return recipe
    names = {field.name for field in dataclasses.fields(TrainRecipe)}
    overrides = {k: v for k, v in dataclasses.asdict(config).items() if k in names and v is not None}
    return dataclasses.replace(recipe, **overrides)


class Defense(ABC):
    """Base class: subclasses set ``name``, ``version``, a frozen ``Config`` dataclass and implement ``apply``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = object
    # Whether the defense trains with the preset's finetuning recipe; its rows then record that recipe.
    uses_recipe: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "Defense":
        return cls(build_config(cls.Config, settings, f"defenses.{cls.name}"))

    def passes_per_pair(self) -> float:
        """Training passes (forward and backward) per clean pair and epoch, counted in CLIP-loss steps: what
        ``cleanbench run`` and ``validate`` multiply by the recipe's pairs and epochs to estimate the grid's time.
        1 for a defense that trains with the recipe, 0 for one that does not; a defense that forwards more views
        of each pair says so."""
        return 1.0 if self.uses_recipe else 0.0

    @abstractmethod
    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        """Return the defended model (the input may be modified in place). ``clean_data`` is in memory or streamed
        from disk (:func:`benchmark.data.batches.pair_batches` batches either)."""

