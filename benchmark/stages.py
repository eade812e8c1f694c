"""The table of defense stages: for each stage, what its defense receives, what it returns, which recipe it trains
with, which of its contract's methods the runner calls, how a cell of it runs, and what its rows add.

Everything that treats stages differently reads this table: the planner (the recipe and the cell's cache keys),
the runner (how a cell gets its model), the cost estimate and ``validate`` (what a cell trains), the conformance
checks (what a defense is handed and must return), the registry (the contract a defense of the stage derives
from) and the leaderboard (which stages' rows carry detection metrics). Adding a stage is one :class:`Stage` entry
plus its contract class (:mod:`defenses.base`); a stage whose cells run like an existing stage's reuses that
stage's ``runs`` class (:mod:`benchmark.runner.stages`), or names a new one.

Contracts and runs are ``"module:Class"`` references, imported when used (as :mod:`benchmark.data.formats` does),
so this module stays torch-free: the leaderboard reads stage names from it without importing any defense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from benchmark.registry import import_object
from benchmark.results import DETECTION_COLUMNS

if TYPE_CHECKING:
    from benchmark.runner.stages import StageRuns


@dataclass(frozen=True)
class Stage:
    """One stage: the hand-off between the runner and a defense acting at it."""

    name: str  # a row's ``stage`` and a defense class's ``stage``
    contract: str  # "module:Class" every defense of the stage derives from
    method: str  # the contract's method the runner calls
    receives: Literal["clean", "training"]  # the preset's clean pairs, or the (poisoned) training pairs
    starts_from: Literal["victim", "initialisation"]  # the trained victim, or a model initialised as it was
    returns: Literal["model", "scores"]  # a defended model, or one suspicion score per pair received
    recipe: Literal["finetune", "victim"]  # ``[finetune]`` with the config's recipe fields set, or ``[victim]``
    runs: str  # "module:Class" of how a cell runs (keys, model, cost, description): :mod:`benchmark.runner.stages`
    adds: tuple[str, ...] = ()  # results columns only this stage's rows fill (beyond CA, ASR and times)
    summary: str = field(default="", compare=False)  # one line for docs and ``list``

    def contract_class(self) -> type:
        """The contract class (importing it)."""
        return import_object(self.contract)

    def runner(self) -> StageRuns:
        """How a cell of this stage runs (importing it: the runner needs torch, this table does not)."""
        return import_object(self.runs)(self)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("post-training", "defenses.base:Defense", "apply", receives="clean", starts_from="victim",
          returns="model", recipe="finetune", runs="benchmark.runner.stages:DefendedVictim",
          summary="defends the trained victim with the clean pairs (CleanCLIP, finetuning, PAR)"),
    Stage("training", "defenses.base:TrainingDefense", "train", receives="training", starts_from="initialisation",
          returns="model", recipe="victim", runs="benchmark.runner.stages:TrainedInstead",
          summary="trains the victim itself on the poisoned training pairs (RoCLIP, SafeCLIP)"),
    Stage("data", "defenses.base:Detector", "score", receives="training", starts_from="victim", returns="scores",
          recipe="victim", runs="benchmark.runner.stages:RetrainedWithout",
          adds=("removal_rate", *DETECTION_COLUMNS),
          summary="scores the training pairs; the victim is retrained without the most suspicious (k-distance, "
                  "SLOF, DAO)"),
)}


def stages_adding(column: str) -> list[str]:
    """The stages whose rows fill ``column`` (the leaderboard's detection table: stages that add detection metrics)."""
    return [stage.name for stage in STAGES.values() if column in stage.adds]
