"""Defenses at the training and data stages run through the same runner as post-training ones: their own victims
cached under content keys, rows with the stage and (for detectors) detection metrics against the manifest,
reuse on a rerun, a failing stage cell recorded alone, and a kill mid-run resumed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from benchmark.data.batches import Normalizer, pair_batches
from benchmark.data.pairs import to_float
from benchmark.detection_metrics import removed_indices
from benchmark.errors import UserError
from benchmark.faults import ENV as FAILPOINT
from benchmark.faults import TRACE_ENV as FAILPOINT_TRACE
from benchmark.presets import DetectionSpec, load_preset
from benchmark.results import DETECTION_COLUMNS, METRIC_COLUMNS
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.stages import SCORES_FILE
from benchmark.training import train
from defenses import DEFENSES
from defenses.base import DefenseContext, Detector, TrainingDefense
from tests.helpers import TEST_PRESET, write_small_preset

CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class NoSettings:
    pass


class CornerEnergy(Detector):
    """Scores a pair by the contrast of its bottom-right 4×4 corner (flat black in most Fashion-MNIST images), where
    this preset's BadNet puts its checkerboard."""

    name = "test-corner"
    Config = NoSettings

    def score(self, model: nn.Module, train_data, context: DefenseContext) -> torch.Tensor:
        return to_float(train_data.images)[..., -4:, -4:].flatten(1).std(dim=1)


class PlainTraining(TrainingDefense):
    """Trains the victim with the CLIP loss for one epoch of the victim's recipe: the simplest training stage."""

    name = "test-plain-training"
    Config = NoSettings

    def train(self, model: nn.Module, train_data, context: DefenseContext) -> nn.Module:
        recipe = dataclasses.replace(context.recipe, epochs=1)
        batches = pair_batches(train_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                               torch.Generator().manual_seed(context.seed), context.device)
        train(model, batches, recipe)
        return model


class WrongShape(Detector):
    name = "test-wrong-shape"
    Config = NoSettings

    def score(self, model, train_data, context):
        return torch.zeros(3)


@pytest.fixture
def stage_defenses():
    for cls in (CornerEnergy, PlainTraining, WrongShape):
        DEFENSES.add(cls.name, cls, source="test")
    yield
    for cls in (CornerEnergy, PlainTraining, WrongShape):
        DEFENSES.unregister(cls.name)


def _plan(defenses, removal_rate=0.1):
    """BadNet with fmnist-tiny's fixed checkerboard in the bottom-right corner, which CornerEnergy looks for."""
    preset = dataclasses.replace(load_preset(str(TEST_PRESET)), detection=DetectionSpec(removal_rate))
    return plan_grid(preset, ["badnet"], defenses, [0],
                     attack_overrides={"pattern": "checkerboard", "location": "bottom-right"})


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stages")
    for cls in (CornerEnergy, PlainTraining):
        DEFENSES.add(cls.name, cls, source="test")
    try:
        summary = run_plan(_plan(["none", "test-corner", "test-plain-training"]), out, CPU)
    finally:
        for cls in (CornerEnergy, PlainTraining):
            DEFENSES.unregister(cls.name)
    # 2 victims (benign, badnet) + 2 × (detector retrain + training-stage victim)
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (6, 6, 0)
    return out


def test_rows_record_each_stage_and_only_detectors_carry_detection_metrics(stage_run):
    rows = pd.read_csv(stage_run / "results.csv").set_index(["attack", "defense"])
    assert rows.loc[("badnet", "none"), "stage"] == "post-training"
    assert rows.loc[("badnet", "test-plain-training"), "stage"] == "training"
    assert rows.loc[("badnet", "test-corner"), "stage"] == "data"
    assert rows.loc[("badnet", "test-corner"), "removal_rate"] == 0.1
    assert rows.loc[("badnet", "test-corner"), "n_removed"] == round(0.1 * 512)
    for defense in ("none", "test-plain-training"):
        assert rows.loc[("badnet", defense), DETECTION_COLUMNS].isna().all()
    benign = rows.loc[("none", "test-corner")]
    assert pd.isna(benign.auroc) and pd.isna(benign.removed_recall) and benign.removed_precision == 0.0
    assert (rows.status == "ok").all() and (rows.time_defense_s[rows.stage != "post-training"] > 0).all()


def test_detection_metrics_equal_a_direct_computation_from_the_saved_scores(stage_run):
    row = pd.read_csv(stage_run / "results.csv").query("attack == 'badnet' and defense == 'test-corner'").iloc[0]
    victim_key = row.victim_key
    manifest = json.loads((stage_run / "cache" / "victims" / victim_key / "poison_manifest.json").read_text())
    folders = [p for p in (stage_run / "cache" / "victims").iterdir() if (p / SCORES_FILE).exists()
               and json.loads((p / "meta.json").read_text())["attack"] == "badnet"]
    assert len(folders) == 1
    scores = load_file(str(folders[0] / SCORES_FILE))["scores"]
    poisoned = torch.zeros(len(scores), dtype=torch.bool)
    poisoned[manifest["indices"]] = True
    # AUROC by counting pairs (poisoned above clean, ties half), independent of the rank formula
    pos, neg = scores[poisoned], scores[~poisoned]
    by_pairs = ((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())
    assert row.auroc == pytest.approx(float(by_pairs), abs=1e-12)
    assert row.auroc > 0.95  # the checkerboard corner is what this detector looks at
    removed = removed_indices(scores, 0.1)
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["removed"] == removed.tolist()
    hits = poisoned[removed].sum().item()
    assert row.removed_precision == pytest.approx(hits / len(removed))
    assert row.removed_recall == pytest.approx(hits / poisoned.sum().item())


def test_a_rerun_trains_nothing_and_reproduces_every_row(stage_run, tmp_path, stage_defenses):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(stage_run, out)
    (out / "results.csv").unlink()  # rows lost: the cache still has every victim and every cell
    summary = run_plan(_plan(["none", "test-corner", "test-plain-training"]), out, CPU)
    assert summary.victims_trained == 0 and summary.cells_run == 0 and summary.cells_reused == 6
    before = pd.read_csv(stage_run / "results.csv").sort_values("cell_id").reset_index(drop=True)
    after = pd.read_csv(out / "results.csv").sort_values("cell_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before[["cell_id", *METRIC_COLUMNS, *DETECTION_COLUMNS]],
                                  after[["cell_id", *METRIC_COLUMNS, *DETECTION_COLUMNS]])


def test_the_cells_own_models_are_reused_when_only_their_metrics_are_lost(stage_run, tmp_path, stage_defenses):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(stage_run, out)
    (out / "results.csv").unlink()
    shutil.rmtree(out / "cache" / "cells")  # evaluation lost, trained models kept
    summary = run_plan(_plan(["none", "test-corner", "test-plain-training"]), out, CPU)
    assert summary.victims_trained == 0 and summary.cells_run == 6
    before = pd.read_csv(stage_run / "results.csv").sort_values("cell_id").reset_index(drop=True)
    after = pd.read_csv(out / "results.csv").sort_values("cell_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before[["cell_id", *METRIC_COLUMNS, *DETECTION_COLUMNS]],
                                  after[["cell_id", *METRIC_COLUMNS, *DETECTION_COLUMNS]])


def test_removing_nothing_only_scores_and_keeps_the_no_defense_victim(tmp_path, stage_defenses):
    """At removal rate 0 (detection only) the cell's model is the no-defense victim, not a retrained copy: the
    scores and detection metrics are there, no victim beyond the grid's is trained, and the two cells agree."""
    summary = run_plan(_plan(["none", "test-corner"], removal_rate=0.0), tmp_path, CPU)
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 4, 0)
    rows = pd.read_csv(tmp_path / "results.csv").query("attack == 'badnet'").set_index("defense")
    assert rows.loc["test-corner", "n_removed"] == 0 and rows.loc["test-corner", "auroc"] > 0.95
    assert pd.isna(rows.loc["test-corner", "removed_precision"])
    for column in ("ca", "asr", "ca_top5"):
        assert rows.loc["test-corner", column] == rows.loc["none", column]
    victims = tmp_path / "cache" / "victims"
    cell_model = next(p for p in victims.iterdir() if (p / SCORES_FILE).exists()
                      and json.loads((p / "meta.json").read_text())["attack"] == "badnet") / "model.safetensors"
    victim = load_file(str(victims / rows.loc["none", "victim_key"] / "model.safetensors"))
    assert load_file(str(cell_model)).keys() == victim.keys()
    assert all(torch.equal(tensor, victim[name]) for name, tensor in load_file(str(cell_model)).items())


def test_a_detection_only_grid_is_planned_without_retraining(stage_defenses):
    from benchmark.runner.cost import grid_cost

    scoring, retraining = (grid_cost(_plan(["none", "test-corner"], removal_rate=rate), None, 1, 50)
                           for rate in (0.0, 0.1))
    assert (scoring.victims, scoring.stage_victims) == (2, 0)
    assert (retraining.victims, retraining.stage_victims) == (4, 2)
    assert scoring.passes < retraining.passes


def test_a_detector_with_bad_scores_fails_alone(tmp_path, stage_defenses):
    summary = run_plan(_plan(["none", "test-wrong-shape"]), tmp_path, CPU)
    rows = pd.read_csv(tmp_path / "results.csv")
    failed = rows[rows.defense == "test-wrong-shape"]
    assert summary.cells_failed == 2 and (failed.status == "failed").all()
    assert failed.reason.str.contains(r"shape \(3,\); expected one score per training pair, shape \(512,\)").all()
    assert (rows[rows.defense == "none"].status == "ok").all()


def test_a_removal_rate_out_of_range_names_its_key():
    with pytest.raises(UserError, match=r"detection.removal_rate = 1.0 is out of range; allowed: \[0.0, 1.0\)"):
        DetectionSpec(1.0)


def test_stage_cells_keep_post_training_keys_unchanged(stage_defenses):
    """Adding stages changed no post-training cell's key: caches from before keep their cells."""
    plan = _plan(["none", "test-corner"])
    post = [cell for cell in plan.cells if cell.stage == "post-training"]
    assert all(cell.trained_key is None and cell.removal_rate is None for cell in post)
    data = [cell for cell in plan.cells if cell.stage == "data"]
    assert len({cell.trained_key for cell in data}) == 2
    other = _plan(["none", "test-corner"], removal_rate=0.2)
    assert {c.key for c in other.cells if c.stage == "data"}.isdisjoint({c.key for c in data})
    assert {c.key for c in other.cells if c.stage == "post-training"} == {c.key for c in post}


REPO = Path(__file__).resolve().parent.parent
# The last victim-recipe step of the grid below is a training-stage cell's, whatever the order: each victim (4 of 4
# steps at the small preset's sizes) trains before its own training-stage cell (4 more): 32 steps in all.
KILL_AT = "train-step:30"


def _cli(preset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", "run", "--preset", str(preset), "--attacks", "badnet",
            "--defenses", "none,test-plain-training", "--seeds", "0,1", "--workers", "1", "--out", str(out),
            "--plugin", "tests.test_stages:PlainTraining"]


@pytest.mark.slow
def test_sigkill_during_a_training_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, stage_defenses,
                                                                                 one_thread):
    """``cleanbench run`` killed inside a training-stage cell, then resumed (in this process, one thread as the
    killed run): its rows equal an uninterrupted run's."""
    preset = write_small_preset(tmp_path / "small.toml")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"

    def run(out: Path) -> None:
        run_plan(plan_grid(load_preset(str(preset)), ["badnet"], ["none", "test-plain-training"], [0, 1]), out, CPU)

    run(reference)
    env = {key: value for key, value in os.environ.items() if key not in (FAILPOINT, FAILPOINT_TRACE)}
    env.update(CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", **{FAILPOINT: KILL_AT})
    killed = subprocess.run(_cli(preset, resumed), env=env, capture_output=True, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rows = pd.read_csv(resumed / "results.csv")
    assert (rows.stage == "training").any() and len(rows) < 8  # killed inside a later training-stage cell
    run(resumed)
    a = pd.read_csv(reference / "results.csv").sort_values("cell_id").reset_index(drop=True)
    b = pd.read_csv(resumed / "results.csv").sort_values("cell_id").reset_index(drop=True)
    assert len(b) == 8 and b.cell_id.is_unique and (b.status == "ok").all()
    pd.testing.assert_frame_equal(a[["cell_id", *METRIC_COLUMNS]], b[["cell_id", *METRIC_COLUMNS]])


def test_validate_says_a_detection_only_sweep_point_trains_no_victim(stage_defenses):
    from benchmark.validate import validate

    report = validate(load_preset(str(TEST_PRESET)), "badnet", "none,test-corner", [0],
                      sweeps=("detection.removal_rate=0,0.1",))
    assert report.ok
    assert any("defense test-corner (data stage): scores the 512 training pairs and removes none "
               "(detection.removal_rate 0: detection only" in line for line in report.lines)
    # the benign and BadNet victims, and one retrained victim per attack at the 10% point only
    assert any(line.startswith("sweep over detection.removal_rate: 2 points") and "4 distinct victims" in line
               for line in report.lines)
