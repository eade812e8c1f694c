"""No defense: the victim as trained. Every attack's reference point for ΔCA and ΔASR."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from benchmark.data.pairs import PairSet
from benchmark.results import REFERENCE_DEFENSE
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext


@dataclass(frozen=True)
class NoDefenseConfig:
    pass


@DEFENSES.register()
class NoDefense(Defense):
    """Returns the model unchanged."""

    name = REFERENCE_DEFENSE
    version = "1"
    Config = NoDefenseConfig
    uses_recipe = False

    def apply(self, model: nn.Module, clean_data: PairSet, context: DefenseContext) -> nn.Module:
        return model
