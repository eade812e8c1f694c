"""``cleanbench submit``: a defense's results, and all it takes to check them, as one bundle (:mod:`benchmark.bundle`).

The bundle carries the defense's rows (every attack and seed it ran) with the no-defense and benign-control rows
they are compared with, their per-image predictions, the source of the defense and of each attack, the preset,
and the environment (``pip freeze``, hardware). Before writing, submit checks that the rows can be rerun as
they are: each row's source hash is the source loaded now, and the preset plans exactly the rows' cell ids (a
run with ``--poison-rate`` or ``--data`` overrides would not; give a preset file that holds them instead).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from attacks import ATTACKS
from benchmark import __version__
from benchmark.bundle import (FORMAT_VERSION, META, PRESET, SOURCE_DIR, check_bundle, plan_rows, unplanned_rows,
                             write_bundle)
from benchmark.cache_layout import CacheLayout, cell_folder_key, cell_predictions_member
from benchmark.errors import UserError
from benchmark.presets import builtin_presets
from benchmark.provenance import Origin, git_commit, origin_of
from benchmark.results import BENIGN_ATTACK, COLUMNS, REFERENCE_DEFENSE, RESULTS_FILE, ResultsFile
from defenses import DEFENSES


def submit(out: Path, defense: str, bundle: Path, preset: str | None = None, data_dir: str | None = None) -> str:
    """Bundle ``defense``'s results from the run folder ``out`` into ``bundle``; returns the bundle's SHA-256.
    ``preset`` (a name or file) defaults to the rows' preset; ``data_dir`` is the ``--data-dir`` of the run."""
    out = Path(out)
    rows = defense_rows(ResultsFile(out / RESULTS_FILE), defense, out)
    preset_path = _preset_path(preset or rows[0]["preset"])
    _check_plan(rows, defense, preset_path, data_dir)
    components = _components(rows, defense)
    files: dict[str, bytes] = {RESULTS_FILE: _csv(rows), PRESET: preset_path.read_bytes()}
    cache = CacheLayout.of_run(out)
    for row in rows:
        key = cell_folder_key(row)  # the row's cache folder: its cache_key (in a sweep, not its cell_id)
        if row["status"] == "ok" and key is not None and cache.cell_predictions_path(key).is_file():
            files[cell_predictions_member(key)] = cache.cell_predictions_path(key).read_bytes()
    for (kind, name), origin in components.items():
        for file in origin.files:
            files[f"{SOURCE_DIR}/{kind}/{name}/{file}"] = (origin.root / file).read_bytes()
    files["environment/pip-freeze.txt"] = pip_freeze().encode()
    files["environment/hardware.json"] = json.dumps(hardware(rows), indent=1).encode()
    files[META] = json.dumps(_meta(rows, defense, data_dir, components), indent=1).encode()
    digest = write_bundle(bundle, files)
    try:  # what verify and the leaderboard will take in, through the same intake
        check_bundle(bundle)
    except UserError:
        Path(bundle).unlink(missing_ok=True)
        raise
    return digest


def defense_rows(results: ResultsFile, defense: str, out: Path) -> list[dict[str, str]]:
    """The defense's rows of one preset, and the no-defense rows on the same victims (the benign control's
    included), in the file's order."""
    own = [row for row in results.rows.values() if row["defense"] == defense]
    if not own:
        present = sorted({row["defense"] for row in results.rows.values()})
        raise UserError(f"no rows of defense '{defense}' in {out / RESULTS_FILE}; it holds: {', '.join(present)}")
    presets = sorted({row["preset"] for row in own})
    if len(presets) > 1:
        raise UserError(f"defense '{defense}' has rows of several presets ({', '.join(presets)}) in {out}; "
                        "run each preset into its own --out folder to submit it")
    victims = {row["victim_key"] for row in own}
    return [row for row in results.rows.values() if row["preset"] == presets[0] and (
        row["defense"] == defense or (row["defense"] == REFERENCE_DEFENSE and row["victim_key"] in victims))]


def _preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise UserError(f"preset file {path} does not exist")
        return path
    presets = builtin_presets()
    if name_or_path not in presets:
        raise UserError(f"preset '{name_or_path}' is not built in: give the preset file the run used with --preset")
    return presets[name_or_path]


def _check_plan(rows: list[dict[str, str]], defense: str, preset_path: Path, data_dir: str | None) -> None:
    """Refuse a bundle whose preset would not rerun its rows."""
    from benchmark.api import load_with_data_dir

    plan = plan_rows(rows, defense, load_with_data_dir(str(preset_path), data_dir or None))
    for row in unplanned_rows(rows, plan)[:1]:
        raise UserError(f"preset {preset_path} does not plan the cell {row['cell_id']} ({row['attack']} × "
                        f"{row['defense']} seed {row['seed']}): the run used other settings (--poison-rate, "
                        "--data, another --data-dir or preset); give --preset a file with the run's settings")


def _components(rows: list[dict[str, str]], defense: str) -> dict[tuple[str, str], Origin]:
    """The origin of the defense and of each attack, checked against the source hash every row recorded."""
    wanted = [("defense", defense)] + [("attack", name) for name in sorted({row["attack"] for row in rows})
                                      if name != BENIGN_ATTACK]
    components = {}
    for kind, name in wanted:
        origin = origin_of((DEFENSES if kind == "defense" else ATTACKS).get(name))
        if not origin.files:
            raise UserError(f"{kind} '{name}' has no source file (defined interactively in {origin.module}); put it "
                            "in a plugin file or package to submit it")
        stale = [row for row in rows if row[kind] == name and row[f"{kind}_source_sha256"] != origin.sha256]
        if any(not row[f"{kind}_source_sha256"] for row in stale):
            raise UserError(f"rows of {kind} '{name}' record no source hash (written before results schema 4); "
                            "rerun them into a new --out folder before submitting")
        if stale:
            raise UserError(f"the source of {kind} '{name}' changed since its rows were written (cell "
                            f"{stale[0]['cell_id']}); rerun those cells with the current code before submitting")
        components[(kind, name)] = origin
    return components


def _meta(rows: list[dict[str, str]], defense: str, data_dir: str | None,
          components: dict[tuple[str, str], Origin]) -> dict[str, Any]:
    own = [row for row in rows if row["defense"] == defense]
    return {
        "format": FORMAT_VERSION, "defense": defense, "preset": rows[0]["preset"],
        "attacks": sorted({row["attack"] for row in own}), "seeds": sorted({int(row["seed"]) for row in own}),
        "data_dir": data_dir or "", "cleanbench_version": __version__, "git_commit": git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "components": [{"kind": kind, "name": name, "origin": origin.kind, "package": origin.package,
                        "version": origin.version, "module": origin.module, "class": origin.qualname,
                        "files": list(origin.files), "sha256": origin.sha256}
                       for (kind, name), origin in components.items()],
    }


def _csv(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def pip_freeze() -> str:
    """The installed distributions as ``name==version`` lines (what ``pip freeze`` lists, without calling pip)."""
    names = {f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions() if dist.metadata["Name"]}
    return "".join(f"{line}\n" for line in sorted(names, key=str.lower))


def hardware(rows: list[dict[str, str]]) -> dict[str, Any]:
    """The machine submitting (CPU model, cores, torch threads and GPUs) and the devices, thread counts and CPUs the
    rows ran with (they may have run elsewhere, e.g. on Slurm)."""
    import torch

    from benchmark.device import cpu_model

    return {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "row_devices": sorted({row["device"] for row in rows}),
        "row_torch_threads": sorted({row["torch_threads"] for row in rows}),
        "row_cpus": sorted({row["cpu"] for row in rows}),
    }


