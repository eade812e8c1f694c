"""The ``Defense`` contract every defense implements, built-in or plugin, at one of three stages (each stage's
hand-off is an entry of :data:`benchmark.stages.STAGES`, which names these contract classes).

* ``post-training`` (:class:`Defense`, ``apply``): receives the (possibly backdoored) victim and the preset's clean
  pairs (its budget, disjoint from the victim's training pairs) and returns a model. CleanCLIP, finetuning, PAR.
* ``training`` (:class:`TrainingDefense`, ``train``): trains the victim itself, from the same initialisation,
  on the poisoned training pairs exactly as the victim would get them. RoCLIP, SafeCLIP.
* ``data`` (:class:`Detector`, ``score``): gets the poisoned training pairs and the no-defense victim trained on
  them, and returns one suspicion score per pair. The runner drops the highest-scored pairs at the preset's
  removal budget (``[detection] removal_rate``), retrains the victim on the rest with the victim's recipe, and
  scores the detection against the poison manifest. Huang et al.'s k-distance, SLOF and DAO.

No stage sees the poison manifest or the test set: the runner holds them. Every stage's model is evaluated
zero-shot, unless it brings its own classifier (:class:`benchmark.metrics.BringsOwnClassifier`), as supervised
finetuning does.
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
    recipe: TrainRecipe  # post-training: the defense's finetuning recipe; training and data: the victim's
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
    """Base class: subclasses set ``name``, ``version``, a frozen ``Config`` dataclass and implement ``apply``
    (a post-training defense), or derive from :class:`TrainingDefense` or :class:`Detector` for the other
    stages."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = object
    stage: ClassVar[str] = "post-training"
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



class TrainingDefense(Defense):
    """A training-stage defense: it trains the victim itself on the poisoned training pairs (RoCLIP, SafeCLIP).

    The runner hands :meth:`train` a model initialised exactly as the no-defense victim was, the training pairs
    as the victim got them (poisoned, no manifest), and a context whose ``recipe`` is the preset's ``[victim]``
    recipe: the defense trains with that budget so it is compared with the victim it replaces.
    """

    stage = "training"
    uses_recipe = False  # it trains with the victim's recipe, which the row records with the victim

    def passes_per_pair(self) -> float:
        """Training passes per training pair and epoch, in CLIP-loss steps (2 for a defense that forwards two
        views of each pair): the cost estimate multiplies this by a victim's training."""
        return 1.0

    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        raise TypeError(f"defense {self.name} acts at the training stage: the runner calls train(), not apply()")

    @abstractmethod
    def train(self, model: nn.Module, train_data: Pairs, context: DefenseContext) -> nn.Module:
        """Return ``model`` (freshly initialised, as the victim was) trained on ``train_data``, the poisoned
        training pairs, with ``context.recipe`` (the victim's recipe)."""


class Detector(Defense):
    """A data-stage defense: one suspicion score per training pair, higher meaning more likely poisoned.

    :meth:`score` gets the no-defense victim of the same attack and seed (trained on these very pairs, in eval
    mode) and the poisoned training pairs; it must not train on them. The runner removes the top
    ``[detection] removal_rate`` of the pairs, retrains the victim on the rest, and scores the detection.
    """

    stage = "data"
    uses_recipe = False  # the retrained victim uses the victim's recipe, which the row records with the victim

    def passes_per_pair(self) -> float:
        """A detector's cost is one victim retrained (its scoring pass is a forward over the training pairs)."""
        return 1.0

    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        raise TypeError(f"defense {self.name} acts at the data stage: the runner calls score(), not apply()")

    @abstractmethod
    def score(self, model: nn.Module, train_data: Pairs, context: DefenseContext) -> torch.Tensor:
        """One finite float score per pair of ``train_data`` (shape ``(N,)``), higher = more suspicious."""
