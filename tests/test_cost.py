"""The grid's cost, printed before a run starts (issue 16.5): counted in training passes, at this machine's speed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import benchmark.runner.cost as estimate
from benchmark.presets import load_preset
from benchmark.runner import plan_grid
from benchmark.runner.store import ArtifactStore
from defenses import DEFENSES
from tests.helpers import TEST_PRESET


def _plan(objective: str = "clip"):
    preset = load_preset(str(TEST_PRESET))
    preset = dataclasses.replace(preset, victim=dataclasses.replace(preset.victim, objective=objective))
    return plan_grid(preset, ["badnet"], ["none", "finetune", "cleanclip"], [0, 1])


def test_defenses_say_how_many_passes_a_clean_pair_costs():
    assert DEFENSES.get("none")().passes_per_pair() == 0
    assert DEFENSES.get("finetune")().passes_per_pair() == 1
    assert DEFENSES.get("cleanclip")().passes_per_pair() == 2  # original + augmented view in one forward
    assert DEFENSES.get("cleanclip").from_settings({"inmodal_weight": 0.0}).passes_per_pair() == 1


@pytest.mark.parametrize("objective, views", [("clip", 1), ("clip+ssl", 2)])
def test_the_cost_of_a_fresh_grid_is_the_sum_of_its_passes(monkeypatch, objective, views):
    monkeypatch.setattr(estimate, "measure_speed", lambda preset, threads, device: 100.0)
    plan = _plan(objective)
    data, victim, finetune = plan.preset.data, plan.preset.victim, plan.preset.finetune
    cost = estimate.grid_cost(plan, None, workers=2, test_images=300)
    assert (cost.victims, cost.cells) == (4, 12)  # (benign + badnet) × 2 seeds; 2 × 3 defenses × 2 seeds
    per_defense = {"none": 0, "finetune": 1, "cleanclip": 2}
    expected = (4 * data.train_pairs * victim.epochs * views
                + sum(4 * data.clean_pairs * finetune.epochs * passes for passes in per_defense.values())
                + 12 * 2 * 300 / 3)
    assert cost.passes == pytest.approx(expected)
    assert cost.seconds == pytest.approx(expected / 100 / 2)
    assert "4 victims to train, 12 cells to run" in cost.describe() and "measured" in cost.describe()


def test_a_folder_with_trained_victims_gives_the_speed_and_is_not_counted_again(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "measure_speed", lambda *args: pytest.fail("the folder's speed should be used"))
    plan = _plan()
    store = ArtifactStore(tmp_path / "cache")
    for spec, speed in zip(plan.victims[:2], (100.0, 300.0)):
        folder = store.victim_dir(spec.key)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"")
        store.save_victim_meta(spec.key, {"images_per_second": speed, "objective": "clip"})
    assert all(store.victim_meta(spec.key) is not None for spec in plan.victims[:2])
    cost = estimate.grid_cost(plan, tmp_path, workers=2, test_images=300)
    assert cost.victims == 2 and cost.cells == 12
    assert cost.images_per_second == 200.0 and "median of 2 victims this folder trained" in cost.speed_source


def test_a_clip_ssl_victims_speed_counts_both_views(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    for index, objective in enumerate(["clip+ssl", "clip+ssl", "clip+ssl"]):
        folder = tmp_path / "cache" / "victims" / f"v{index}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"images_per_second": 50.0, "objective": objective}))
    assert estimate.recorded_speed(store)[0] == 100.0


def test_measuring_the_speed_takes_a_few_real_steps():
    speed = estimate.measure_speed(load_preset(str(TEST_PRESET)), threads=1)
    assert 1 < speed < 1e6


def test_measuring_uses_the_workers_threads_and_restores_the_callers(monkeypatch):
    seen = []
    real_loss = estimate.clip_loss
    monkeypatch.setattr(estimate, "clip_loss", lambda *args: seen.append(torch.get_num_threads()) or real_loss(*args))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        estimate.measure_speed(load_preset(str(TEST_PRESET)), threads=1)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_validate_prints_the_estimate():
    from benchmark.validate import validate

    report = validate(load_preset(str(TEST_PRESET)), "badnet", "none,finetune", [0])
    assert report.ok and any(line.startswith("estimate: 2 victims to train, 4 cells to run") for line in report.lines)
