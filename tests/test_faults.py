"""Crash safety, proven by killing the runner: SIGKILL at seeded random failpoints, rerun, compare.

An uninterrupted reference run counts how often it reaches each failpoint (``benchmark.faults``). A seeded
generator then picks kill points (point, hit) that are sure to be reached, at least one at each kind of point.
For each, a fresh run in a process of its own is killed there and rerun without the failpoint (in the test's
process: another process again, and cheaper), and the folder must then equal the reference: the same rows (no
loss, no duplicate), the same checkpoints byte for byte, every checkpoint verifying its checksum, and no
temporary file left behind. ``CLEANBENCH_FAULT_SEED`` and ``CLEANBENCH_FAULT_KILLS`` change the draw (CI may
pass its run number as the seed); a failure names the point and the whole draw.

The other faults: a damaged checkpoint on disk is retrained, never loaded; a NaN loss or a plugin whose
``apply`` raises fails only its cells (traceback beside them); a second writer is refused by the lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from attacks import ATTACKS
from benchmark.data.batches import Normalizer, PairBatches
from benchmark.faults import ENV, POINTS, TRACE_ENV
from benchmark.presets import load_preset
from benchmark.results import METRIC_COLUMNS
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.store import ArtifactStore
from benchmark.training import clip_loss, train
from defenses import DEFENSES
from tests.helpers import RunsCode, write_small_preset

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # bitwise equality holds for one thread count
GRID = (["badnet"], ["none", "finetune"], [0])  # 2 victims (badnet + benign control) × 2 defenses = 4 cells
KILLS = int(os.environ.get("CLEANBENCH_FAULT_KILLS", "10"))
SEED = int(os.environ.get("CLEANBENCH_FAULT_SEED", "0"))
ROW_COLUMNS = ["cell_id", "attack", "defense", "seed", "status", "reason", "victim_key", "poison_count",
               *METRIC_COLUMNS]
DRIVER = """
import sys
import torch
from benchmark.presets import load_preset
from benchmark.runner import plan_grid, run_plan
attacks, defenses, seeds = {grid!r}
summary = run_plan(plan_grid(load_preset(sys.argv[1]), attacks, defenses, seeds), sys.argv[2], torch.device("cpu"))
sys.exit(1 if summary.cells_failed else 0)
""".format(grid=GRID)


def write_fault_preset(path: Path) -> Path:
    """The small preset, with settings for this module's broken attack plugins."""
    return write_small_preset(path, "fmnist-fault", "".join(f"\n[attacks.{name}]\npoison_rate = 0.05\n"
                                                         for name in ("exploding-trigger", "raising-trigger")))


def run_driver(preset: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (ENV, TRACE_ENV)}
    environment.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", DRIVER, str(preset), str(out)], env=environment,
                          capture_output=True, text=True, timeout=600)


@dataclass
class Reference:
    preset: Path
    out: Path
    hits: Counter


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted run, in its own process, counting the hits of every failpoint."""
    root = tmp_path_factory.mktemp("faults")
    preset, out, trace = write_fault_preset(root / "fault.toml"), root / "reference", root / "trace.txt"
    result = run_driver(preset, out, **{TRACE_ENV: str(trace)})
    assert result.returncode == 0, result.stderr
    return Reference(preset, out, Counter(trace.read_text().split()))


def kill_points(hits: Counter, count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` distinct (point, hit) pairs, each reached by an uninterrupted run: one at each point, then
    random ones among the rest."""
    rng = random.Random(seed)
    points = sorted(hits)
    chosen = [(point, rng.randint(1, hits[point])) for point in points]
    rest = [(point, hit) for point in points for hit in range(1, hits[point] + 1) if (point, hit) not in chosen]
    chosen += rng.sample(rest, max(0, min(count - len(chosen), len(rest))))
    return chosen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert table.cell_id.is_unique, "a row was duplicated"
    return table.sort_values("cell_id")[ROW_COLUMNS].reset_index(drop=True)


def assert_same_as_reference(out: Path, reference: Path) -> None:
    """Same rows, same victims byte for byte (checksums verified), same cell metrics, no temporaries left."""
    pd.testing.assert_frame_equal(rows(out), rows(reference))
    store = ArtifactStore(out / "cache")
    victims = sorted(p.name for p in (reference / "cache" / "victims").iterdir())
    assert sorted(p.name for p in (out / "cache" / "victims").iterdir()) == victims
    for key in victims:
        assert store.victim_meta(key) is not None, f"victim {key} does not verify"
        for name in ("model.safetensors", "poison_manifest.json"):
            ours, theirs = out / "cache" / "victims" / key / name, reference / "cache" / "victims" / key / name
            assert ours.exists() == theirs.exists() and (not ours.exists() or sha256(ours) == sha256(theirs)), name
    for cell in (reference / "cache" / "cells").iterdir():
        assert (json.loads((out / "cache" / "cells" / cell.name / "metrics.json").read_text())["metrics"]
                == json.loads((cell / "metrics.json").read_text())["metrics"])
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


def test_the_reference_run_reaches_every_kind_of_failpoint(reference):
    assert reference.hits["train-step"] == 2 * 4 + 2 * 2  # two victims of 4 steps, two finetunings of 2
    assert reference.hits["row-appended"] == reference.hits["before-rename:results.csv"] == 4
    assert reference.hits["checkpoint-saved"] == reference.hits["before-rename:model.safetensors"] == 2
    assert reference.hits["before-rename:meta.json"] == 2 and reference.hits["before-rename:metrics.json"] == 4
    assert len(kill_points(reference.hits, KILLS, SEED)) >= 10
    assert {point.split(":")[0] for point in reference.hits} == {point.split(":")[0] for point in POINTS}  # documented


@pytest.mark.parametrize("index", range(KILLS))
def test_sigkill_at_a_failpoint_then_rerun_equals_the_uninterrupted_run(reference, tmp_path, index):
    points = kill_points(reference.hits, KILLS, SEED)
    point, hit = points[index]
    where = f"kill point {point}:{hit} (seed {SEED}; all points: {points})"
    out = tmp_path / "out"
    killed = run_driver(reference.preset, out, **{ENV: f"{point}:{hit}"})
    assert killed.returncode == -signal.SIGKILL, f"{where}: not killed (exit {killed.returncode}): {killed.stderr}"
    summary = run_plan(plan_grid(load_preset(str(reference.preset)), *GRID), out, CPU)  # the rerun, in this process
    assert summary.cells_failed == 0, f"{where}: {summary.failures}"
    assert_same_as_reference(out, reference.out)


def test_same_seed_same_manifest_checkpoints_and_metrics_in_another_process(reference, tmp_path):
    """Determinism: this process repeats the reference run (another process) bitwise, for every cell."""
    out = tmp_path / "again"
    summary = run_plan(plan_grid(load_preset(str(reference.preset)), *GRID), out, CPU)
    assert (summary.victims_trained, summary.cells_run) == (2, 4)
    assert_same_as_reference(out, reference.out)


def test_damaged_checkpoints_are_retrained_never_loaded(reference, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(reference.out, out)
    (out / "results.csv").unlink()
    shutil.rmtree(out / "cache" / "cells")  # so every cell needs its victim again
    flipped, swapped = sorted((out / "cache" / "victims").glob("*/model.safetensors"))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the tensors: same size, still parses
    flipped.write_bytes(bytes(data))
    marker = tmp_path / "unpickled"
    swapped.write_bytes(pickle.dumps(RunsCode(marker)))  # a malicious file in place of a checkpoint
    summary = run_plan(plan_grid(load_preset(str(reference.preset)), *GRID), out, CPU)
    assert (summary.victims_trained, summary.victims_loaded, summary.cells_failed) == (2, 0, 0)
    assert not marker.exists()
    assert_same_as_reference(out, reference.out)


class NanLossDefense(DEFENSES.get("none")):
    """Finetuning whose loss is NaN from the first step (an exploding learning rate, in one line)."""

    name = "nan-loss"
    factor = float("nan")  # a test sets 1.0 to let the retry succeed

    def apply(self, model, clean_data, context):
        batches = PairBatches(clean_data, context.tokenizer, Normalizer(model), context.recipe.batch_size,
                              torch.Generator().manual_seed(context.seed), context.device)
        train(model, batches, context.recipe, loss_fn=lambda m, b: clip_loss(m, b) * self.factor,
              description=f"defense {self.name}")
        return model


class ExplodingAttack(ATTACKS.get("badnet")):
    """An attack plugin whose trigger raises."""

    name = "exploding-trigger"

    def apply(self, images, generator):
        raise RuntimeError("the trigger exploded")


def test_nan_loss_and_raising_plugins_fail_only_their_cells(reference, tmp_path):
    out = tmp_path / "plugins"
    shutil.copytree(reference.out, out)
    DEFENSES.add("nan-loss", NanLossDefense, source="test")
    ATTACKS.add("exploding-trigger", ExplodingAttack, source="test")
    try:
        plan = plan_grid(load_preset(str(reference.preset)), ["badnet", "exploding-trigger"],
                         ["none", "finetune", "nan-loss"], [0])
        summary = run_plan(plan, out, CPU)
        check_failed_cells(summary, out, reference)
        NanLossDefense.factor = 1.0  # the cause is fixed: a rerun retries exactly the failed cells
        retry = run_plan(plan_grid(load_preset(str(reference.preset)), ["badnet"], ["none", "nan-loss"], [0]), out, CPU)
    finally:
        NanLossDefense.factor = float("nan")
        DEFENSES.unregister("nan-loss")
        ATTACKS.unregister("exploding-trigger")
    assert (retry.cells_skipped, retry.cells_run, retry.cells_failed) == (2, 2, 0)
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    retried = table[(table.defense == "nan-loss") & (table.attack != "exploding-trigger")]
    assert len(table) == 9 and len(retried) == 2 and (retried.status == "ok").all()
    assert not any((out / "cache" / "cells" / cell_id / "error.txt").exists() for cell_id in retried.cell_id)


def check_failed_cells(summary, out: Path, reference: Reference) -> None:
    assert (summary.cells_skipped, summary.cells_failed, summary.cells_run) == (4, 5, 0)
    table = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    failed = table[table.status == "failed"]
    assert sorted(zip(failed.attack, failed.defense)) == [
        ("badnet", "nan-loss"), ("exploding-trigger", "finetune"), ("exploding-trigger", "nan-loss"),
        ("exploding-trigger", "none"), ("none", "nan-loss")]
    nan = failed[failed.defense == "nan-loss"].set_index("attack").reason
    assert nan["badnet"] == "defense: NonFiniteLossError: defense nan-loss: loss is nan at step 0 (epoch 1)"
    assert (failed[failed.attack == "exploding-trigger"].reason
            == "victim: RuntimeError: the trigger exploded").all()
    for cell_id, reason in zip(failed.cell_id, failed.reason):
        traceback_text = (out / "cache" / "cells" / cell_id / "error.txt").read_text()
        assert traceback_text.startswith("Traceback") and reason.split(": ", 2)[2] in traceback_text
    ok = table[table.status == "ok"].sort_values("cell_id")[ROW_COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(ok, rows(reference.out))  # the cells that worked are untouched


RAISING_PLUGIN = '''
from attacks import ATTACKS
from attacks.badnet import BadNet


@ATTACKS.register()
class RaisingTrigger(BadNet):
    """A plugin attack whose trigger raises."""

    name = "raising-trigger"

    def apply(self, images, generator):
        raise RuntimeError("the plugin trigger raised")
'''


def test_cli_run_with_a_raising_plugin_fails_its_cells_and_still_writes_the_leaderboard(reference, tmp_path, cli):
    out, plugin = tmp_path / "cli", tmp_path / "raising.py"
    shutil.copytree(reference.out, out)
    plugin.write_text(RAISING_PLUGIN)
    try:
        code, _, err = cli("run", "--preset", reference.preset, "--plugin", plugin, "--attacks", "badnet,raising-trigger",
                           "--defenses", "none,finetune", "--seeds", "0", "--out", out, "--no-plugin-autoload")
    finally:
        ATTACKS.unregister("raising-trigger")
        sys.modules.pop("cleanbench_plugin_raising", None)
    assert code == 1 and "Traceback" not in err
    table = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    failed = table[table.attack == "raising-trigger"]
    assert len(table) == 6 and len(failed) == 2 and (table[table.attack != "raising-trigger"].status == "ok").all()
    assert (failed.reason == "victim: RuntimeError: the plugin trigger raised").all()
    for cell_id in failed.cell_id:
        assert "the plugin trigger raised" in (out / "cache" / "cells" / cell_id / "error.txt").read_text()
    assert "raising-trigger" in (out / "index.html").read_text()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder_and_writes_nothing(reference, tmp_path, cli):
    out = tmp_path / "locked"
    shutil.copytree(reference.out, out)
    (out / "results.csv").unlink()  # work to do: only the lock stops the second run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from benchmark.runner.lock import OutputLock\n"
         "with OutputLock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        code, _, err = cli("run", "--preset", reference.preset, "--attacks", "badnet", "--defenses", "none,finetune",
                           "--seeds", "0", "--out", out, "--no-plugin-autoload")
        assert code == 2
        assert err == (f"error: {out} is in use by pid {holder.pid} on {socket.gethostname()}; "
                       "wait for it or choose another --out\n")
        assert snapshot(out) == before
    finally:
        holder.communicate("", timeout=30)
