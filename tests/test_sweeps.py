"""Sweeps (``--sweep KEY=V1,V2`` and a preset's ``[sweep]``): every point planned and checked before anything
runs, rows that record their point, a cache shared across points (a defense-setting sweep trains no extra
victim), resuming, and the leaderboard's settings and curves."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.api import run_grid, write_report
from benchmark.cache_layout import CacheLayout
from benchmark.errors import UserError
from benchmark.presets import load_preset
from benchmark.results import RESULTS_FILE, ResultsFile
from benchmark.runner import plan_grid
from benchmark.sweeps import axes_of, parse_sweep_option, sweep_points
from leaderboard.load import load_cell_predictions, load_results
from leaderboard.sweep_plots import sweep_figure
from tests.helpers import TEST_PRESET
from tests.results_rows import make_row, write_results

SWEEP = "defenses.finetune.epochs=1,2"
TRENDS_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sweep_trends.py"


def _trends(runs: list[str], defense: str):
    """``benchmarks/sweep_trends.py``'s ``trends``, loaded from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sweep_trends", TRENDS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.trends(runs, defense)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("sweep")
    grid = run_grid(["badnet"], ["none", "finetune"], [0], preset=str(TEST_PRESET), out=out, workers=1,
                    no_plugin_autoload=True, sweeps=[SWEEP])
    write_report(grid)  # as `cleanbench run` does
    return out, grid


def test_values_are_read_as_toml_and_axes_multiply():
    axis = parse_sweep_option("defenses.cleanclip.inmodal_weight=0, 0.5,2")
    assert axis.values == (0, 0.5, 2) and isinstance(axis.values[1], float)
    preset = load_preset(str(TEST_PRESET))
    points = sweep_points(preset, axes_of(preset, [SWEEP, "finetune.lr=1e-4,1e-3,3e-3"]))
    assert len(points) == 6 and points[0].preset.defenses["finetune"] == {"epochs": 1}
    assert points[-1].preset.finetune.lr == 3e-3 and points[-1].label == "defenses.finetune.epochs=2, finetune.lr=0.003"


@pytest.mark.parametrize("option, message", [
    ("finetune.epoch=1,2", r"Unknown key 'finetune.epoch'. Did you mean: epochs\?"),
    ("finetune.epochs=0,1", r"sweep finetune.epochs=0: .*epochs = 0 is out of range; allowed: \[1, 10000\]"),
    ("model.name=x", r"sweep key 'model.name': expected one of data.KEY, victim.KEY"),
    ("defenses.cleanclp.epochs=1", r"Unknown defense 'cleanclp'. Did you mean: cleanclip\?"),
    ("finetune.epochs", r"expected KEY=V1,V2,..."),
    ("finetune.epochs=1,1", r"a value is listed twice"),
])
def test_a_bad_sweep_is_one_line_naming_the_key(option, message):
    preset = load_preset(str(TEST_PRESET))
    with pytest.raises(UserError, match=message):
        sweep_points(preset, axes_of(preset, [option]))


def test_a_bad_attack_setting_in_a_sweep_fails_when_planned(cli):
    code, out, err = cli("validate", "--preset", TEST_PRESET, "--attacks", "badnet", "--defenses", "none",
                         "--sweep", "attacks.badnet.patch_sise=2,4", "--no-plugin-autoload")
    assert code == 2 and "Unknown key 'attacks.badnet.patch_sise'. Did you mean: patch_size?" in err
    assert "Traceback" not in err


def test_a_defense_setting_sweep_trains_no_extra_victim_and_shares_the_other_cells(swept):
    out, grid = swept
    assert grid.summary.victims_trained == 2  # the benign control and badnet, once for both points
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 8 and rows.cell_id.is_unique
    assert sorted(rows.sweep.unique()) == ['{"defenses.finetune.epochs": 1}', '{"defenses.finetune.epochs": 2}']
    none = rows[rows.defense == "none"]
    assert none.cache_key.nunique() == 2  # one per victim, shared by both points
    assert len(list((out / "cache" / "cells").iterdir())) == 6  # 2 none + 2 × 2 finetune
    finetune = rows[rows.defense == "finetune"]
    assert finetune.cache_key.nunique() == 4


def test_a_rerun_of_a_sweep_does_nothing(swept):
    out, _ = swept
    again = run_grid(["badnet"], ["none", "finetune"], [0], preset=str(TEST_PRESET), out=out, workers=1,
                     no_plugin_autoload=True, sweeps=[SWEEP])
    assert (again.summary.victims_trained, again.summary.cells_run, again.summary.cells_skipped) == (0, 0, 8)


def test_the_leaderboard_keeps_points_apart_and_draws_the_curves(swept):
    out, _ = swept
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board.preset) == {"fmnist-test [defenses.finetune.epochs=1]", "fmnist-test [defenses.finetune.epochs=2]"}
    assert (out / "sweeps.png").is_file() and (out / "sweeps.svg").is_file()
    assert 'id="figure-sweeps"' in (out / "index.html").read_text()


def test_a_sweep_row_s_predictions_are_found_in_its_cache_folder_by_submit_verify_and_the_leaderboard(swept):
    """A sweep row's ``cell_id`` is the row's, its ``cache_key`` the folder several points share: everyone asks
    the layout (:func:`benchmark.cache_layout.cell_folder_key`) instead of building the path from ``cell_id``."""
    from benchmark.verify import compare_cell

    out, _ = swept
    rows = list(ResultsFile(out / RESULTS_FILE).rows.values())
    cache = CacheLayout.of_run(out)
    for row in rows:
        assert row["cell_id"] != row["cache_key"] and not cache.cell_dir(row["cell_id"]).exists()
        assert cache.row_predictions_path(row) == cache.cell_predictions_path(row["cache_key"])
        assert cache.row_predictions_path(row).is_file()
    row = next(row for row in rows if (row["attack"], row["defense"]) == ("badnet", "finetune"))
    same_machine = {**row, "device": "cpu", "cpu": "a test CPU"}  # compared bitwise, predictions included
    check = compare_cell(same_machine, same_machine, out, out, 0.02)
    assert check.verified and "per-image predictions equal" in check.detail, check.detail
    table = load_results([out])
    assert set(load_cell_predictions(table)) == set(table.cell_id)


def test_an_attack_sweep_shares_the_benign_control_and_a_preset_may_declare_it(tmp_path):
    preset_file = tmp_path / "swept.toml"
    preset_file.write_text(f'extends = "{TEST_PRESET}"\nname = "swept"\n\n[sweep]\n'
                           '"attacks.badnet.poison_count" = [10, 20]\n')
    preset = load_preset(str(preset_file))
    points = sweep_points(preset, axes_of(preset))
    plans = [plan_grid(p.preset, ["badnet"], ["none"], [0], sweep=p.values) for p in points]
    benign = {v.key for plan in plans for v in plan.victims if v.attack == "none"}
    poisoned = {v.key for plan in plans for v in plan.victims if v.attack == "badnet"}
    assert len(benign) == 1 and len(poisoned) == 2
    assert [plan.victims[-1].poison_count for plan in plans] == [10, 20]
    assert json.loads(json.dumps(dict(plans[1].sweep))) == {"attacks.badnet.poison_count": 20}


def test_a_clean_pairs_sweep_shares_the_victims_of_attacks_that_do_not_read_the_clean_pairs():
    """The victim-training split is cut first, so ``data.clean_pairs`` does not change it: BadNet's and the benign
    control's victims are shared across the points, the victims of attacks derived from the clean pairs
    (label-consistent's surrogate) are not, and every cell is distinct (it finetunes on the clean split)."""
    preset = load_preset(str(TEST_PRESET))
    points = sweep_points(preset, axes_of(preset, ["data.clean_pairs=100,200"]))
    plans = [plan_grid(p.preset, ["badnet", "label-consistent"], ["none", "cleanclip"], [0], sweep=p.values)
             for p in points]
    keys = {attack: {v.key for plan in plans for v in plan.victims if v.attack == attack}
            for attack in ("none", "badnet", "label-consistent")}
    assert {attack: len(found) for attack, found in keys.items()} == {"none": 1, "badnet": 1, "label-consistent": 2}
    cells = [cell.key for plan in plans for cell in plan.cells]
    assert len(set(cells)) == len(cells) == 12


def _swept_rows(key: str, values: list[float]) -> pd.DataFrame:
    rows = [{"sweep": json.dumps({key: v}), "preset": f"p [{key}={v}]", "attack": "badnet", "defense": "none",
             "seed": seed, "asr": 0.5, "ca": 0.8} for v in values for seed in (0, 1)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("values", "scale"), [([25, 75, 200, 600], "log"), ([0, 0.5, 1, 2, 4, 8], "linear"),
                                               ([1, 2, 5], "linear")])
def test_a_sweep_spanning_a_factor_of_ten_or_more_is_drawn_on_a_log_axis(values, scale):
    figure = sweep_figure(_swept_rows("attacks.badnet.poison_count", values), {})
    asr_axis, ca_axis = figure.axes[:2]
    assert asr_axis.get_xscale() == ca_axis.get_xscale() == scale
    if scale == "log":
        assert [label.get_text() for label in asr_axis.get_xticklabels()] == [str(v) for v in values]


def test_a_detectors_sweep_gets_an_auroc_panel_and_other_sweeps_do_not():
    rows = _swept_rows("defenses.detect-kdist.k", [8, 16, 32])
    detector = rows.assign(defense="detect-kdist", auroc=[0.6, 0.62, 0.7, 0.74, 0.9, 0.88])
    figure = sweep_figure(pd.concat([rows, detector]), {})
    asr_axis, ca_axis, auroc_axis = figure.axes
    assert auroc_axis.get_title() == "AUROC (p)" and auroc_axis.get_visible()
    (line,) = auroc_axis.lines  # the detector's alone: the no-defense rows have no AUROC
    assert list(line.get_xdata()) == [8, 16, 32] and list(line.get_ydata()) == pytest.approx([0.61, 0.72, 0.89])
    assert len(asr_axis.lines) == len(ca_axis.lines) == 2
    legend = [text.get_text() for text in auroc_axis.get_legend().get_texts()]
    assert sorted(legend) == ["badnet × detect-kdist", "badnet × none"]  # every line of the row, once
    assert len(sweep_figure(rows, {}).axes) == 2


def test_the_trends_script_reads_each_points_cells_and_correlates_them(swept):
    out, _ = swept
    printed = subprocess.run([sys.executable, str(TRENDS_SCRIPT), str(out), "--defense", "finetune"], check=True,
                             capture_output=True, text=True).stdout
    rows = pd.read_csv(out / "results.csv")
    for epochs in (1, 2):
        cell = rows[(rows.attack == "badnet") & (rows.defense == "finetune")
                    & (rows.sweep == json.dumps({"defenses.finetune.epochs": epochs}))].iloc[0]
        line = next(line for line in printed.splitlines() if f"| badnet | {epochs} | 1 |" in line)
        assert f"| {cell.asr:.3f} | {cell.ca:.3f} |" in line
    assert "| defenses.finetune.epochs | badnet |" in printed.split("\n\n")[1]


def test_with_two_swept_keys_each_trend_holds_the_other_key_fixed(swept, tmp_path):
    out, _ = swept
    rows = pd.read_csv(out / "results.csv")
    copies = []
    for victim_epochs, shift in ((1, 0.0), (2, 0.5)):
        copy = rows.copy()
        points = [dict(json.loads(point), **{"victim.epochs": victim_epochs}) for point in copy.sweep]
        copy["sweep"] = [json.dumps(point) for point in points]
        copy["asr"] = copy["asr"] * (1 - shift)
        copy["cell_id"] = copy["cell_id"] + f"e{victim_epochs}"  # rows are one per cell
        copies.append(copy)
    (tmp_path / "run").mkdir()
    pd.concat(copies).to_csv(tmp_path / "run" / "results.csv", index=False)
    points, lines = _trends([str(tmp_path / "run")], "finetune")
    epochs_curves = lines[lines.swept == "defenses.finetune.epochs"]
    assert sorted(epochs_curves.setting) == ["fmnist-test [victim.epochs=1]", "fmnist-test [victim.epochs=2]"]
    at = points[(points.swept == "defenses.finetune.epochs") & (points.value == 1)].set_index("setting").asr
    assert at["fmnist-test [victim.epochs=2]"] == pytest.approx(at["fmnist-test [victim.epochs=1]"] * 0.5)


def test_a_detection_only_k_sweep_is_read_as_an_auroc_curve(tmp_path):
    """Two swept keys, one of them a single value for the whole run (removal rate 0): only k makes a curve, and
    the detector's AUROC is followed along it (ASR and CA are the victim's at every k)."""
    rows = []
    for k, aurocs in ((8, (0.6, 0.7)), (16, (0.7, 0.8)), (64, (0.9, 0.95))):
        point = {"detection.removal_rate": 0, "defenses.detect-x.k": k}
        for seed, auroc in enumerate(aurocs):
            extra = {"preset": "fmnist-test", "sweep": json.dumps(point)}
            rows += [make_row("badnet", "none", seed, 0.8, 0.95, **extra, cell_id=f"n{k}{seed}"),
                     make_row("badnet", "detect-x", seed, 0.8, 0.95, **extra, cell_id=f"d{k}{seed}", stage="data",
                              removal_rate=0.0, auroc=auroc, n_removed=0)]
    write_results(tmp_path / "run" / "results.csv", rows)
    points, lines = _trends([str(tmp_path / "run")], "detect-x")
    assert list(lines.swept) == ["defenses.detect-x.k"]  # the one-valued removal rate is not a curve
    assert points.set_index("value").auroc.to_dict() == pytest.approx({8: 0.65, 16: 0.75, 64: 0.925})
    # Pearson's r of the ranks (k: 1.5 1.5 3.5 3.5 5.5 5.5; AUROC: 1 2.5 2.5 4 5 6) = 15 / √(16 · 17)
    assert lines.iloc[0].rho_auroc.startswith("+0.91 (") and lines.iloc[0].auroc_range == pytest.approx(0.275)
    assert _trends([str(tmp_path / "run")], "detect-y")[1].empty  # its k is another detector's: no curve of its own
    figure = sweep_figure(load_results([tmp_path / "run" / "results.csv"]), {})
    assert [axis.get_title().split(" (")[0] for axis in figure.axes] == ["ASR", "CA", "AUROC"]
