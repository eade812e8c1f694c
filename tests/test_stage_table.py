"""A new defense stage is one entry in :data:`benchmark.stages.STAGES` plus its contract class: this file adds a toy
stage (a defense that gets the victim and the clean pairs and returns a pruned model through a method of its own)
and runs it end to end: registration, plan, ``validate``'s description, the cost estimate, the runner, the result
rows and the leaderboard, without touching any other file of the engine."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from benchmark.presets import load_preset
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.cost import grid_cost
from benchmark.stages import STAGES, Stage
from benchmark.validate import validate
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext
from tests.helpers import write_small_preset

TOY_STAGE = Stage("toy-pruning", "tests.test_stage_table:Pruner", "prune", receives="clean", starts_from="victim",
                  returns="model", recipe="finetune", runs="benchmark.runner.stages:DefendedVictim",
                  summary="prunes the victim's weights (a test of the table)")


class Pruner(Defense):
    """The toy stage's contract: ``prune`` gets the victim and the clean pairs and returns the pruned model."""

    stage = "toy-pruning"
    uses_recipe = False

    def apply(self, model: nn.Module, clean_data, context: DefenseContext) -> nn.Module:
        raise TypeError(f"defense {self.name} acts at the toy-pruning stage: the runner calls prune()")

    @abstractmethod
    def prune(self, model: nn.Module, clean_data, context: DefenseContext) -> nn.Module:
        """The pruned model."""


@dataclass(frozen=True)
class NoSettings:
    pass


class ZeroSmallest(Pruner):
    """Zeroes the smallest half of every weight matrix of the vision tower's last block."""

    name = "test-zero-smallest"
    Config = NoSettings
    received: list[int] = []

    def prune(self, model: nn.Module, clean_data, context: DefenseContext) -> nn.Module:
        ZeroSmallest.received.append(len(clean_data))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if ".resblocks.1." in name and weight.ndim == 2:
                    weight[weight.abs() <= weight.abs().median()] = 0.0
        return model


@pytest.fixture
def toy_stage(monkeypatch):
    monkeypatch.setitem(STAGES, TOY_STAGE.name, TOY_STAGE)
    DEFENSES.add(ZeroSmallest.name, ZeroSmallest, source="test")
    yield
    DEFENSES.unregister(ZeroSmallest.name)


def test_a_toy_stage_runs_end_to_end_from_one_table_entry_and_its_contract(toy_stage, tmp_path: Path):
    preset = load_preset(str(write_small_preset(tmp_path / "small.toml")))
    plan = plan_grid(preset, ["badnet"], ["none", ZeroSmallest.name], [0])
    toy = [cell for cell in plan.cells if cell.defense == ZeroSmallest.name]
    assert {cell.stage for cell in toy} == {"toy-pruning"} and all(cell.trained_key is None for cell in toy)
    assert grid_cost(plan, None, 1, 50).cells == 4

    report = validate(preset, "badnet", ZeroSmallest.name, [0])
    assert report.ok, report.problems
    assert any(line.startswith(f"defense {ZeroSmallest.name}: 64 clean pairs") for line in report.lines)

    ZeroSmallest.received.clear()
    summary = run_plan(plan, tmp_path / "out", torch.device("cpu"))
    assert (summary.cells_run, summary.cells_failed) == (4, 0), summary.failures
    assert ZeroSmallest.received == [64, 64]  # the clean pairs, as the table says, once per victim

    rows = pd.read_csv(tmp_path / "out" / "results.csv").set_index(["attack", "defense"])
    assert rows.loc[("badnet", ZeroSmallest.name), "stage"] == "toy-pruning"
    assert (rows.status == "ok").all() and rows.ca.between(0, 1).all()
    pruned, kept = rows.loc[("badnet", ZeroSmallest.name)], rows.loc[("badnet", "none")]
    assert pruned.cache_key != kept.cache_key and (pruned.ca, pruned.asr) != (kept.ca, kept.asr)

    from leaderboard.load import load_results

    assert set(load_results([tmp_path / "out"])["stage"]) == {"post-training", "toy-pruning"}
