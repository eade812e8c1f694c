"""``cleanbench verify``: rerun chosen cells of a bundle through the normal runner and compare their metrics.

The bundle is checked first (:func:`benchmark.bundle.open_bundle`: paths, limits, manifest hashes, source hashes);
nothing runs until it passes. Then the bundled preset must plan the very cell ids the rows record, built-in
components must be the same code here (same source hash), its predictions must be readable without pickle and
fit their rows (:func:`check_predictions`), and every row must claim what planning its cell from the bundled
preset and sources gives (:data:`CLAIM_COLUMNS`: preset name, model, victim and defense settings and recipe,
attack and defense versions and source hashes, keys; a preset named as a built-in one must be that
preset). A row that claims anything else is NOT verified, naming the column, and nothing is rerun. Plugin code
is loaded from the bundle itself
(a file as ``--plugin file.py``, a package from the bundle's copy put first on ``sys.path``), never from what
is installed under the same name. A bundle may not bring its own code under a built-in's name (it could
otherwise replace the no-defense reference it is measured against).

The rerun goes through :func:`benchmark.api.run_grid` into a scratch folder, in this process (results and cache
only: the library call draws no page). A cell is compared bitwise (every metric column, and the per-image
predictions where the bundle has them, each row's from its cache folder: :mod:`benchmark.cache_layout`) when both
ran on the same kind of CPU (model and the instruction set torch dispatches to: another one rounds some kernels
differently) with the same torch thread count (verify sets the rows' count); otherwise CA, top-5 CA and ASR must
agree within a stated absolute tolerance and the image counts exactly. Either way the rerun's row must equal the
bundle's in every claim column too. What a row says of the machine and checkout (``cleanbench_version``,
``git_commit``, the distributions that provided the code, device, times) is not checked; the record lists what
was and what was not (:data:`CHECKED_AGAINST_PLAN`, :data:`CHECKED_AGAINST_RERUN`, :data:`NOT_CHECKED`).
Verifying runs the plugin's code: do it in a sandbox for code you do not trust.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from attacks import ATTACKS
from benchmark import __version__
from benchmark.bundle import PRESET, Bundle, BundleError, open_bundle, plan_rows, record_path, unplanned_rows
from benchmark.cache_layout import CacheLayout, cell_folder_key, cell_predictions_member
from benchmark.errors import UserError
from benchmark.plugins import register_plugins
from benchmark.predictions import PredictionsError, load_predictions
from benchmark.progress import Reporter
from benchmark.provenance import git_commit, origin_of
from benchmark.results import BENIGN_ATTACK, COLUMNS, METRIC_COLUMNS, REFERENCE_DEFENSE, ResultsFile, format_value
from benchmark.runner.record import PLANNED_COLUMNS, planned_columns
from benchmark.storage import write_text_atomic
from defenses import DEFENSES

DEFAULT_TOLERANCE = 0.02  # absolute, on CA, top-5 CA and ASR, where a bitwise comparison is not possible
TOLERANCE_METRICS = ("ca", "ca_top5", "asr")
ENGINE_PACKAGES = ("attacks", "benchmark", "cleanbench", "defenses", "leaderboard")  # a bundle may not shadow these
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
KEY_COLUMNS = ("cell_id", "cache_key", "victim_key")  # keyed with the data folder: another --data-dir changes them
# Which installed distribution provides a component, and its version, say where the code came from on a machine,
# not what the code is (its source hash does): like the checkout and the device they are not checked.
ENVIRONMENT_COLUMNS = ("attack_package", "attack_package_version", "defense_package", "defense_package_version")
CLAIM_COLUMNS = [column for column in PLANNED_COLUMNS if column not in ENVIRONMENT_COLUMNS]
# What the verification record says was checked: each row's claims against a new plan of its cell (and bundle.json's
# preset), and each rerun row against its bundle row (bitwise, or the image counts exactly and CA, top-5 CA and ASR
# within the tolerance; predictions where both kept them).
CHECKED_AGAINST_PLAN = [*CLAIM_COLUMNS, "bundle.json preset"]
CHECKED_AGAINST_RERUN = ["status", *CLAIM_COLUMNS, *METRIC_COLUMNS, "predictions"]
NOT_CHECKED = [column for column in COLUMNS if column not in CHECKED_AGAINST_RERUN]  # as the record says


@dataclass(frozen=True)
class CellCheck:
    """One rerun cell: verified or not, and why."""

    attack: str
    defense: str
    seed: int
    cell_id: str
    verified: bool
    detail: str

    def line(self) -> str:
        label = f"{self.attack} × {self.defense} seed {self.seed}"
        return f"{'verified' if self.verified else 'NOT verified'}: {label} ({self.detail})"


@dataclass
class Verification:
    """What :func:`verify_bundle` found, cell by cell."""

    bundle: Bundle
    checks: list[CellCheck]
    tolerance: float
    device: str
    rerun: bool = True  # False: rows claimed what their preset and sources do not plan, and nothing was rerun

    @property
    def verified(self) -> bool:
        """Verified only when cells were rerun and every one matched."""
        return bool(self.checks) and all(check.verified for check in self.checks)

    def record(self) -> dict[str, Any]:
        """The verification record written beside the bundle, bound to the bundle's SHA-256."""
        return {"format": 1, "bundle": self.bundle.path.name, "bundle_sha256": self.bundle.sha256,
                "defense": self.bundle.meta["defense"], "verified": self.verified, "tolerance": self.tolerance,
                "device": self.device, "cleanbench_version": __version__, "git_commit": git_commit(),
                "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rerun": self.rerun,
                "fields_checked": {"against_the_bundled_preset_and_sources": CHECKED_AGAINST_PLAN,
                                   "against_the_rerun": CHECKED_AGAINST_RERUN if self.rerun else [],
                                   "not_checked": NOT_CHECKED},
                "cells": [asdict(check) for check in self.checks]}


def verify_bundle(path: Path, *, cells: str | None = None, device: str = "auto", data_dir: str | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, record: bool = True,
                  log: Callable[[str], None] = print) -> Verification:
    """Check the bundle ``path``, rerun ``cells`` (``ATTACK:SEED,...`` or ``all``; default one per attack) and
    compare; with ``record``, write the verification record beside the bundle."""
    if not 0.0 <= tolerance <= 1.0:
        raise UserError(f"--tolerance {tolerance}: must be in [0, 1] (absolute, on CA and ASR)")
    with tempfile.TemporaryDirectory(prefix="cleanbench-verify-") as scratch:
        bundle = open_bundle(Path(path), Path(scratch) / "bundle")
        rows = list(ResultsFile(bundle.results).rows.values())
        defense = bundle.meta["defense"]
        chosen = choose_cells(rows, defense, cells)
        check_predictions(bundle.folder, rows)
        try:
            _load_sources(bundle)
            claims = check_claims(bundle, rows, defense)
            if claims:
                result = Verification(bundle, claims, tolerance, "", rerun=False)
            else:
                log(f"rerunning {', '.join(f'{a}:{s}' for a, s in chosen)} of {defense} (and the cells they are "
                    "compared with) in a scratch folder deleted afterwards")
                checks, ran_on = _rerun(bundle, rows, defense, chosen, Path(scratch) / "rerun", device, data_dir,
                                        tolerance)
                result = Verification(bundle, checks, tolerance, ran_on)
        finally:
            _forget_sources(bundle)
        if record:
            write_text_atomic(record_path(bundle.path), json.dumps(result.record(), indent=1))
    return result


def choose_cells(rows: list[dict[str, str]], defense: str, spec: str | None) -> list[tuple[str, int]]:
    """The (attack, seed) cells of ``defense`` to rerun: ``spec`` as ``ATTACK:SEED,...`` or ``all``; by default
    the lowest seed of each attack (the benign control only where no attack has an ``ok`` row)."""
    ok = sorted({(row["attack"], int(row["seed"])) for row in rows
                 if row["defense"] == defense and row["status"] == "ok"}, key=lambda cell: (cell[1], cell[0]))
    if not ok:
        raise UserError(f"the bundle has no successful cell of defense '{defense}' to rerun")
    if spec is None:
        lowest: dict[str, int] = {}
        for attack, seed in ok:
            lowest.setdefault(attack, seed)
        attacked = {attack: seed for attack, seed in lowest.items() if attack != BENIGN_ATTACK}
        return sorted((attacked or lowest).items())
    if spec.strip() == "all":
        return ok
    chosen = []
    for part in (part.strip() for part in spec.split(",") if part.strip()):
        attack, _, seed = part.rpartition(":")
        if not seed.isdigit() or (attack, int(seed)) not in ok:
            listed = ", ".join(f"{a}:{s}" for a, s in ok)
            raise UserError(f"--cells {part!r}: not a successful cell of '{defense}' in the bundle; choose from: "
                            f"{listed} (or 'all')")
        chosen.append((attack, int(seed)))
    return chosen


def _load_sources(bundle: Bundle) -> None:
    """Check built-ins against the code here and load the bundle's own plugin code (a plugin that fails to load
    stops the verification: its cells could not be rerun)."""
    specs = []
    for component in bundle.meta["components"]:
        kind, name, files = component["kind"], component["name"], component["files"]
        registry = DEFENSES if kind == "defense" else ATTACKS
        builtin = name in registry and registry.source(name) == "built-in"
        if component.get("origin") == "built-in":
            here = origin_of(registry.get(name)).sha256 if builtin else ""
            if here != component["sha256"]:
                raise UserError(f"built-in {kind} '{name}' here is not the code the bundle was made with (cleanbench "
                                f"{component.get('version', '?')}, commit {str(bundle.meta.get('git_commit'))[:12]}); "
                                "install that version to verify it")
            continue
        if builtin:
            raise BundleError(f"the bundle brings its own code for the built-in {kind} '{name}': refused")
        registry.unregister(name)  # the bundle's code, not what is installed under this name, is what is checked
        root = bundle.source_dir(kind, name)
        if component.get("origin") == "file":
            specs.append(str(root / files[0]))
            continue
        module, top = str(component.get("module", "")), files[0].split("/")[0].removesuffix(".py")
        if not _MODULE.fullmatch(module) or module.split(".")[0] != top or not _MODULE.fullmatch(component["class"]):
            raise BundleError(f"the bundle's {kind} '{name}' names module {module!r}, not one of its files: refused")
        if top in ENGINE_PACKAGES or top in sys.stdlib_module_names:
            raise BundleError(f"the bundle's {kind} '{name}' would replace the module {top!r}: refused")
        _purge_modules(top)
        sys.path.insert(0, str(root))
        specs.append(f"{module}:{component['class']}")
    failures = register_plugins(specs, no_autoload=True)
    if failures:
        raise UserError(f"the bundle's plugin '{failures[0].name}' failed to load: {failures[0].error}")


def _forget_sources(bundle: Bundle) -> None:
    """Take the bundle's code back out of this process: its folders off ``sys.path`` and its plugins out of the
    registries (the scratch folder they were loaded from is about to be deleted)."""
    for component in bundle.meta["components"]:
        kind, name = component["kind"], component["name"]
        root = str(bundle.source_dir(kind, name))
        while root in sys.path:
            sys.path.remove(root)
        registry = DEFENSES if kind == "defense" else ATTACKS
        if component.get("origin") != "built-in" and name in registry and registry.source(name) != "built-in":
            registry.unregister(name)


def _purge_modules(top: str) -> None:
    for name in [name for name in sys.modules if name == top or name.startswith(f"{top}.")]:
        del sys.modules[name]


def check_predictions(folder: Path, rows: list[dict[str, str]]) -> None:
    """Every bundled predictions file of a row must read without pickle and fit its row (as many clean and
    triggered images, the row's class count): checked before anything runs (:class:`BundleError` otherwise)."""
    layout = CacheLayout.of_run(folder)
    for row in rows:
        path = layout.row_predictions_path(row)
        if path is None or not path.is_file():
            continue
        member = cell_predictions_member(str(cell_folder_key(row)))
        try:
            predictions = load_predictions(path)
        except PredictionsError as error:
            raise BundleError(f"the bundle's {str(error).replace(str(path), member)}: refused") from None
        counts = {"n_clean": len(predictions.clean_pred), "n_triggered": len(predictions.triggered_pred),
                  "n_classes": predictions.n_classes}
        for column, count in counts.items():
            if row[column] not in ("", str(count)):
                raise BundleError(f"the bundle's {member} holds {count} for {column}, its row "
                                  f"{row['cell_id']} {row[column]}: refused")


def check_claims(bundle: Bundle, rows: list[dict[str, str]], defense: str) -> list[CellCheck]:
    """Plan the rows' cells again from the bundled preset (with the data folder the rows were keyed with) and the
    loaded sources; a row must be a planned cell (else :class:`UserError`: the rerun would compare other cells),
    and one whose :data:`CLAIM_COLUMNS` differ from its plan is returned as NOT verified, naming the first
    column that differs. A bundled preset named as a built-in preset must be that preset, and ``bundle.json``'s
    preset the planned one."""
    from benchmark.api import load_with_data_dir
    from benchmark.presets import builtin_presets

    data_dir = bundle.meta.get("data_dir") or None
    preset = load_with_data_dir(str(bundle.folder / PRESET), data_dir)
    plan = plan_rows(rows, defense, preset)
    for row in unplanned_rows(rows, plan)[:1]:
        raise UserError(f"the bundled preset does not plan cell {row['cell_id']} ({row['attack']} × "
                        f"{row['defense']} seed {row['seed']}) here: another version of an attack or defense")
    planned = {cell.row_id: cell for cell in plan.cells}
    own = ""
    if preset.name in builtin_presets():
        here = load_with_data_dir(preset.name, data_dir)
        if dataclasses.replace(here, source="") != dataclasses.replace(preset, source=""):
            own = (f"the bundled preset is named '{preset.name}' but its settings are not those of the built-in "
                   f"preset '{preset.name}'")
    if not own and bundle.meta.get("preset") != plan.preset.name:
        own = f"bundle.json's preset is {bundle.meta.get('preset')!r}, the bundled preset's name {plan.preset.name!r}"
    checks = []
    for row in rows:
        expected = {column: format_value(value) for column, value in planned_columns(plan, planned[row["cell_id"]])
                    .items()}
        wrong = [column for column in CLAIM_COLUMNS if row[column] != expected[column]]
        if wrong or own:
            detail = (f"the row claims {wrong[0]} {row[wrong[0]] or 'empty'!r}; the bundled preset and sources plan "
                      f"{expected[wrong[0]] or 'empty'!r}") if wrong else own
            checks.append(CellCheck(row["attack"], row["defense"], int(row["seed"]), row["cell_id"], False,
                                    f"{detail}; nothing was rerun"))
    return checks


def _rerun(bundle: Bundle, rows: list[dict[str, str]], defense: str, chosen: list[tuple[str, int]], out: Path,
           device: str, data_dir: str | None, tolerance: float) -> tuple[list[CellCheck], str]:
    import torch

    from benchmark.api import run_grid

    threads = {row["torch_threads"] for row in rows if (row["attack"], int(row["seed"])) in chosen
               and row["defense"] == defense and row["torch_threads"].isdigit()}
    before = torch.get_num_threads()
    if len(threads) == 1:
        torch.set_num_threads(int(threads.pop()))  # a CPU cell is bitwise reproducible at its own thread count
    try:
        attacks = sorted({attack for attack, _ in chosen} - {BENIGN_ATTACK}) or BENIGN_ATTACK
        grid = run_grid(attacks, [defense], sorted({seed for _, seed in chosen}), preset=str(bundle.folder / PRESET),
                        out=out, device=device, data_dir=data_dir or bundle.meta.get("data_dir") or None,
                        no_plugin_autoload=True, workers=1,  # in this process, with the plugins loaded above
                        reporter=ScratchReporter(out))
    finally:
        torch.set_num_threads(before)
    rerun = {(r["attack"], r["defense"], r["seed"]): r for r in ResultsFile(grid.results).rows.values()}
    # Another --data-dir than the run's changes every cell id (the data folder is part of the keys), not the cells:
    # the plan check above already tied the ids to the bundled preset.
    same_keys = not data_dir or data_dir == bundle.meta.get("data_dir")
    checks = [compare_cell(row, rerun[(row["attack"], row["defense"], row["seed"])], bundle.folder, out, tolerance,
                           same_keys)
              for row in rows if row["status"] == "ok" and (row["attack"], row["defense"], row["seed"]) in rerun
              and row["defense"] in (defense, REFERENCE_DEFENSE)]
    return checks, ", ".join(sorted({r["device"] for r in rerun.values()}))


class ScratchReporter(Reporter):
    """The rerun's progress, its lines naming the scratch folder as such rather than by a path that is gone once
    ``verify`` ends."""

    def __init__(self, scratch: Path) -> None:
        super().__init__()
        self.scratch = str(scratch)

    def log(self, message: str) -> None:
        super().log(message.replace(self.scratch, "the scratch folder"))


def compare_cell(row: dict[str, str], rerun: dict[str, str], bundle_folder: Path, rerun_folder: Path,
                 tolerance: float, same_keys: bool = True) -> CellCheck:
    """Compare a bundle row with its rerun: bitwise on the same kind of CPU (:func:`benchmark.device.cpu_kind`) at
    the same thread count, else within ``tolerance``."""
    def check(verified: bool, detail: str) -> CellCheck:
        return CellCheck(row["attack"], row["defense"], int(row["seed"]), row["cell_id"], verified, detail)

    if rerun["status"] != "ok":
        return check(False, f"the rerun failed: {rerun['reason']}")
    if same_keys and rerun["cell_id"] != row["cell_id"]:
        return check(False, f"the rerun is cell {rerun['cell_id']}, not {row['cell_id']} (another config)")
    for column in CLAIM_COLUMNS:
        if rerun.get(column, "") != row.get(column, "") and (same_keys or column not in KEY_COLUMNS):
            return check(False, f"{column} is {row.get(column) or 'empty'!r} in the bundle, "
                                f"{rerun.get(column) or 'empty'!r} on the rerun")
    bitwise = (row["device"] == rerun["device"] == "cpu" and row["torch_threads"] == rerun["torch_threads"]
               and row["cpu"] == rerun["cpu"] != "")
    if not bitwise:
        return _within(check, row, rerun, tolerance)
    for column in METRIC_COLUMNS:
        if row[column] != rerun[column]:
            return check(False, f"{column} is {row[column] or 'empty'} in the bundle, {rerun[column] or 'empty'} on "
                                f"the rerun (bitwise on cpu, {row['torch_threads']} threads)")
    # Each row's cache folder is its cache_key (in a sweep not its cell_id), as the layout says.
    return _same_predictions(check, CacheLayout.of_run(bundle_folder).row_predictions_path(row),
                             CacheLayout.of_run(rerun_folder).row_predictions_path(rerun))


def _within(check: Callable[[bool, str], CellCheck], row: dict[str, str], rerun: dict[str, str],
            tolerance: float) -> CellCheck:
    for column in ("n_clean", "n_triggered"):
        if row[column] != rerun[column]:
            return check(False, f"{column} is {row[column]} in the bundle, {rerun[column]} on the rerun")
    for column in TOLERANCE_METRICS:
        if (row[column] == "") != (rerun[column] == ""):
            return check(False, f"{column} is {row[column] or 'empty'} in the bundle, {rerun[column] or 'empty'} on "
                                "the rerun")
        if row[column] and abs(float(row[column]) - float(rerun[column])) > tolerance:
            return check(False, f"{column} is {float(row[column]):.4f} in the bundle, {float(rerun[column]):.4f} on "
                                f"the rerun: more than {tolerance:g} apart")
    return check(True, f"within {tolerance:g}: {_machine(row)} in the bundle, {_machine(rerun)} on the rerun")


def _machine(row: dict[str, str]) -> str:
    """Where a row ran, as far as bitwise repeatability goes: device, thread count and CPU."""
    return f"{row['device']} ({row['torch_threads'] or '?'} threads, {row['cpu'] or 'CPU not recorded'})"


def _same_predictions(check: Callable[[bool, str], CellCheck], path: Path | None,
                      rerun_path: Path | None) -> CellCheck:
    if path is None or not path.is_file():
        return check(True, "bitwise: every metric equal; the bundle has no predictions for it")
    if rerun_path is None or not rerun_path.is_file():
        return check(False, "the rerun kept no predictions to compare with the bundle's")
    bundled, rerun = load_predictions(path), load_predictions(rerun_path)
    for name in ("clean_label", "clean_pred", "triggered_index", "triggered_pred"):
        if not np.array_equal(getattr(bundled, name), getattr(rerun, name)):
            return check(False, f"the per-image {name} differs from the rerun's (the metrics are equal)")
    count = len(bundled.clean_pred) + len(bundled.triggered_pred)
    return check(True, f"bitwise: every metric and all {count} per-image predictions equal")
