"""The runner's promises: reuse everything computed, resume after a kill, record failures and go on."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.api import GridRun, run_grid
from benchmark.device import cpu_kind
from benchmark.errors import UserError
from benchmark.presets import load_preset
from benchmark.results import GALLERY_FILE, METRIC_COLUMNS, RESULTS_FILE, ResultsFile
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.lock import OutputLock
from benchmark.runner.store import ArtifactStore
from defenses import DEFENSES
from defenses.base import Defense
from tests.helpers import TEST_PRESET, write_small_preset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished tiny grid (badnet × {none, finetune} plus the benign control, seed 0)."""
    out = tmp_path_factory.mktemp("grid")
    grid = run_grid(["badnet"], ["none", "finetune"], [0], preset=str(TEST_PRESET), out=out, device="cpu", workers=1,
                    no_plugin_autoload=True)  # the library call `cleanbench run` wraps
    summary = grid.summary
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 4, 0)
    assert grid.results == out / RESULTS_FILE
    return out


def test_the_library_call_writes_no_report_and_the_command_does(finished_run, tmp_path, cli):
    """``run_grid`` returns what it ran and leaves the page to ``cleanbench run`` (``write_report``)."""
    assert not (finished_run / "index.html").exists() and not (finished_run / GALLERY_FILE).exists()
    assert not (finished_run / "leaderboard.csv").exists()
    assert "leaderboard" not in {field.name for field in dataclasses.fields(GridRun)}
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    code, stdout, err = cli("run", "--preset", TEST_PRESET, "--attacks", "badnet", "--defenses", "none,finetune",
                            "--seeds", "0", "--out", out, "--device", "cpu", "--workers", "1", "--no-plugin-autoload")
    assert code == 0, stdout + err
    assert (out / "index.html").is_file() and (out / GALLERY_FILE).stat().st_size > 0
    assert f"leaderboard: {out / 'index.html'}" in err
    assert (out / RESULTS_FILE).read_bytes() == (finished_run / RESULTS_FILE).read_bytes()  # every cell reused


@dataclass(frozen=True)
class KeptAsIsConfig:
    pass


class KeptAsIs(Defense):
    """Returns the model unchanged; given to ``run_grid`` as a class, never registered by hand."""

    name = "kept-as-is"
    version = "1"
    Config = KeptAsIsConfig
    uses_recipe = False

    def apply(self, model, clean_data, context):
        return model


def test_run_grid_takes_classes_as_well_as_names(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    assert "kept-as-is" not in DEFENSES
    try:
        for _ in range(2):  # giving the same class again is harmless
            grid = run_grid(["badnet"], [KeptAsIs, "finetune"], [0], preset=str(TEST_PRESET), out=out, device="cpu",
                            workers=1, no_plugin_autoload=True)
        assert DEFENSES.get("kept-as-is") is KeptAsIs
    finally:
        DEFENSES.unregister("kept-as-is")
    assert (grid.summary.victims_trained, grid.summary.cells_failed) == (0, 0)
    rows = pd.read_csv(out / RESULTS_FILE).set_index(["attack", "defense"])
    assert len(rows) == 6 and (rows.status == "ok").all()
    for attack in ("badnet", "none"):  # the model unchanged: the no-defense reference's numbers
        assert rows.loc[(attack, "kept-as-is"), "ca"] == rows.loc[(attack, "none"), "ca"]
    assert not (out / "index.html").exists()
    with pytest.raises(UserError, match="class .*KeptAsIsConfig does not derive from defenses.base.Defense$"):
        run_grid(["badnet"], [KeptAsIsConfig], [0], preset=str(TEST_PRESET), out=out, no_plugin_autoload=True)

    class Local(KeptAsIs):
        name = "kept-locally"

    before = (out / RESULTS_FILE).read_bytes()
    try:
        with pytest.raises(UserError, match="worker processes cannot import it: pass workers=1"):
            run_grid(["badnet"], [Local], [0], preset=str(TEST_PRESET), out=out, device="cpu", workers=2,
                     no_plugin_autoload=True)
    finally:
        DEFENSES.unregister("kept-locally")
    assert (out / RESULTS_FILE).read_bytes() == before


def _plan():
    return plan_grid(load_preset(str(TEST_PRESET)), ["badnet"], ["none", "finetune"], [0])


def test_plan_always_includes_the_no_defense_reference_and_shares_victims():
    plan = plan_grid(load_preset(str(TEST_PRESET)), ["badnet"], ["finetune"], [0, 1])
    assert len(plan.victims) == 4  # (benign control + badnet) × 2 seeds: never attacks × defenses
    assert sorted({cell.defense for cell in plan.cells}) == ["finetune", "none"]
    assert len(plan.cells) == 8 and len({cell.key for cell in plan.cells}) == 8


# The runner's modules, lowest first: each imports only those before it, so there is no import circle.
RUNNER_LAYERS = ("lock", "store", "plan", "pretrained", "record", "cost", "stages", "execute", "executors", "grid",
                 "__init__")


def test_the_runner_imports_one_way_at_module_level():
    import ast

    import benchmark.runner

    folder = Path(benchmark.runner.__file__).parent
    assert sorted(path.stem for path in folder.glob("*.py")) == sorted(RUNNER_LAYERS)  # a new module gets a layer
    for index, name in enumerate(RUNNER_LAYERS):
        tree = ast.parse((folder / f"{name}.py").read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            ours = [module for module in modules if module.split(".")[0] in ("benchmark", "attacks", "defenses")]
            assert not ours or id(node) in top_level, f"runner/{name}.py: function-local import of {ours}"
            for module in ours:
                assert not module.startswith(("benchmark.api", "benchmark.cli", "benchmark.validate")), \
                    f"runner/{name}.py imports {module}, a layer above the runner"
                if module.startswith("benchmark.runner."):
                    assert module.split(".")[2] in RUNNER_LAYERS[:index], \
                        f"runner/{name}.py imports {module}: not a layer below it"


def test_rows_record_the_recipe_each_defense_trained_with_and_how_it_was_chosen(finished_run):
    rows = {row["defense"]: row for row in ResultsFile(finished_run / "results.csv").rows.values()}
    recipe = json.loads(rows["finetune"]["defense_recipe"])
    preset = load_preset(str(TEST_PRESET))
    assert {k: recipe[k] for k in ("epochs", "batch_size", "lr")} == {
        "epochs": preset.finetune.epochs, "batch_size": preset.finetune.batch_size, "lr": preset.finetune.lr}
    assert recipe["tuning"] == "fixed in the preset"  # the test preset has no [tuning] notes
    assert rows["none"]["defense_recipe"] == ""  # no training, no recipe


def test_rows_record_where_they_ran_down_to_the_cpu_s_instruction_set(finished_run):
    rows = list(ResultsFile(finished_run / "results.csv").rows.values())
    capability = torch.backends.cpu.get_cpu_capability()
    assert {(row["device"], row["torch_threads"]) for row in rows} == {("cpu", str(torch.get_num_threads()))}
    assert {row["cpu"] for row in rows} == {cpu_kind()} and cpu_kind().endswith(f" ({capability})")


def test_tuning_notes_name_their_section():
    preset = dataclasses.replace(load_preset(str(TEST_PRESET)), tuning={"recipe": "lr on clean val CA",
                                                                         "cleanclip": "λ2 = 1 (paper)"})
    cells = {cell.defense: cell for cell in plan_grid(preset, ["badnet"], ["cleanclip", "finetune"], [0]).cells}
    assert cells["cleanclip"].recipe["tuning"] == ("[finetune] recipe: lr on clean val CA; "
                                                 "[defenses.cleanclip]: λ2 = 1 (paper)")
    assert cells["finetune"].recipe["tuning"] == "[finetune] recipe: lr on clean val CA"


def test_the_recipe_a_defense_is_given_is_the_one_its_row_records():
    preset = dataclasses.replace(load_preset(str(TEST_PRESET)), defenses={"finetune": {"epochs": 3, "lr": 2e-4}})
    cells = {cell.defense: cell for cell in plan_grid(preset, ["badnet"], ["finetune"], [0]).cells}
    recipe = cells["finetune"].train_recipe
    assert (recipe.epochs, recipe.lr, recipe.batch_size) == (3, 2e-4, preset.finetune.batch_size)
    assert cells["finetune"].recipe == {**dataclasses.asdict(recipe), "tuning": "fixed in the preset"}
    assert cells["none"].recipe is None and cells["none"].train_recipe == preset.finetune


def test_second_run_trains_nothing(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    summary = run_plan(_plan(), out, CPU)
    assert (summary.victims_trained, summary.cells_run, summary.cells_skipped) == (0, 0, 4)


def test_committed_rows_alone_resume_a_study_in_a_fresh_folder(finished_run, tmp_path):
    """The README's cross-machine resume: a run's results.csv, copied into an empty folder (no cache), is enough
    for the runner to skip its cells, so a later session trains only what those rows lack."""
    out = tmp_path / "fresh"
    out.mkdir()
    shutil.copy(finished_run / "results.csv", out / "results.csv")
    summary = run_plan(_plan(), out, CPU)
    assert (summary.victims_trained, summary.cells_run, summary.cells_skipped) == (0, 0, 4)
    assert not (out / "cache" / "victims").exists()


def test_lost_rows_are_rebuilt_from_cached_artifacts(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "results.csv").unlink()
    summary = run_plan(_plan(), out, CPU)
    assert (summary.victims_trained, summary.cells_run, summary.cells_reused) == (0, 0, 4)
    before = pd.read_csv(finished_run / "results.csv").sort_values("cell_id")[METRIC_COLUMNS].reset_index(drop=True)
    after = pd.read_csv(out / "results.csv").sort_values("cell_id")[METRIC_COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


def test_a_row_rebuilt_from_the_cache_says_where_the_cell_ran_not_where_it_was_rebuilt(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "results.csv").unlink()
    records = sorted((out / "cache" / "cells").glob("*/metrics.json"))
    elsewhere = {"device": "cuda:0", "torch_threads": 8, "cpu": "Intel Xeon (AVX512)"}
    for path, where in zip(records, [elsewhere, None, elsewhere, elsewhere]):
        record = json.loads(path.read_text())
        assert record["ran_on"] == {"device": "cpu", "torch_threads": torch.get_num_threads(), "cpu": cpu_kind()}
        if where is None:
            del record["ran_on"]  # a cache written before cells saved where they ran
        else:
            record["ran_on"] = where
        path.write_text(json.dumps(record))
    run_plan(_plan(), out, CPU)
    rows = {row["cache_key"]: row for row in ResultsFile(out / "results.csv").rows.values()}
    machines = [(rows[path.parent.name]["device"], rows[path.parent.name]["torch_threads"], rows[path.parent.name]["cpu"])
                for path in records]
    assert machines == [("cuda:0", "8", "Intel Xeon (AVX512)"), ("", "", ""), *[("cuda:0", "8", "Intel Xeon (AVX512)")] * 2]


def test_corrupt_checkpoint_is_never_loaded(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "results.csv").unlink()
    shutil.rmtree(out / "cache" / "cells")
    checkpoint = next((out / "cache" / "victims").glob("*/model.safetensors"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a write cut short
    summary = run_plan(_plan(), out, CPU)
    assert summary.victims_trained == 1 and summary.victims_loaded == 1 and summary.cells_failed == 0


class ExplodingDefense(DEFENSES.get("none")):
    """A defense whose apply raises, to check that only its cells fail."""

    name = "exploding"

    def apply(self, model, clean_data, context):
        raise RuntimeError("boom")


def test_failing_defense_marks_only_its_cells_failed(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    DEFENSES.add("exploding", ExplodingDefense, source="test")
    try:
        plan = plan_grid(load_preset(str(TEST_PRESET)), ["badnet"], ["none", "exploding"], [0])
        summary = run_plan(plan, out, CPU)
    finally:
        DEFENSES.unregister("exploding")
    assert summary.cells_failed == 2 and summary.cells_skipped == 2
    results = pd.read_csv(out / "results.csv")
    failed = results[results.defense == "exploding"]
    assert (failed.status == "failed").all() and failed.reason.str.contains("RuntimeError: boom").all()
    assert (results[results.defense != "exploding"].status == "ok").all()
    for cell_id in failed.cell_id:
        assert "boom" in (out / "cache" / "cells" / cell_id / "error.txt").read_text()


def test_resuming_under_a_changed_config_is_refused_before_anything_is_written(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = (out / "results.csv").read_bytes()
    plan = plan_grid(load_preset(str(TEST_PRESET)), ["badnet"], ["none", "finetune"], [0],
                     attack_overrides={"poison_rate": 0.1})
    with pytest.raises(UserError, match="badnet / none seed 0 under another config"):
        run_plan(plan, out, CPU)
    assert (out / "results.csv").read_bytes() == before


def test_a_second_writer_is_refused(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            run_plan(_plan(), tmp_path, CPU)


def _cli(preset: Path, out: Path) -> list[str]:
    """``cleanbench run`` with its default workers (a pool of processes on this machine's cores)."""
    return [sys.executable, "-m", "benchmark.cli", "run", "--preset", str(preset), "--attacks", "badnet",
            "--defenses", "none,finetune", "--seeds", "0,1", "--out", str(out)]


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, one_thread):
    """The whole ``cleanbench run`` (coordinator and worker pool) killed once some cells are recorded, then rerun
    through the CLI: its rows equal an uninterrupted run's (in this process, one thread, as each pool worker).
    ``test_faults`` kills one process at every kind of failpoint; this is the same promise through the CLI."""
    preset = write_small_preset(tmp_path / "small.toml")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_plan(plan_grid(load_preset(str(preset)), ["badnet"], ["none", "finetune"], [0, 1]), reference, CPU)
    env = dict(os.environ, CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD="1")
    process = subprocess.Popen(_cli(preset, resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some, but not all, cells are recorded
        rows = len(pd.read_csv(resumed / "results.csv")) if (resumed / "results.csv").exists() else 0
        if rows >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = len(pd.read_csv(resumed / "results.csv"))
    assert 2 <= killed_rows < 8
    subprocess.run(_cli(preset, resumed), check=True, env=env, capture_output=True)
    a = pd.read_csv(reference / "results.csv").sort_values("cell_id").reset_index(drop=True)
    b = pd.read_csv(resumed / "results.csv").sort_values("cell_id").reset_index(drop=True)
    assert len(b) == 8 and b.cell_id.is_unique
    pd.testing.assert_frame_equal(a[["cell_id", *METRIC_COLUMNS]], b[["cell_id", *METRIC_COLUMNS]])


def test_every_cell_keeps_its_per_image_predictions_and_they_give_its_metrics(finished_run):
    from benchmark.predictions import FILENAME, load_predictions

    for row in ResultsFile(finished_run / "results.csv").rows.values():
        predictions = load_predictions(finished_run / "cache" / "cells" / row["cell_id"] / FILENAME)
        assert ArtifactStore.of_run(finished_run).row_predictions_path(row) == \
            finished_run / "cache" / "cells" / row["cell_id"] / FILENAME  # outside a sweep the two ids agree
        assert int(row["n_classes"]) == predictions.n_classes == 10
        assert len(predictions.clean_pred) == int(row["n_clean"])
        assert predictions.clean_correct.mean() == pytest.approx(float(row["ca"]), abs=1e-12)
        if row["attack"] == "none":  # benign control: nothing triggered
            assert predictions.target == -1 and len(predictions.triggered_pred) == 0
        else:
            assert len(predictions.triggered_pred) == int(row["n_triggered"])
            assert (predictions.clean_label[predictions.triggered_index] != predictions.target).all()
            assert predictions.triggered_success.mean() == pytest.approx(float(row["asr"]), abs=1e-12)
