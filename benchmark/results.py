"""The results file: one row per grid cell, its schema documented here and nowhere else.

``results.csv`` is rewritten atomically (temporary file, fsync, rename) every time a cell finishes, so a kill at
any moment leaves either the old or the new file, never a torn one. A file written under another schema
version is refused rather than mixed.

Columns (metrics are fractions in [0, 1]; times are seconds; configs are canonical JSON):

====================  ==========================================================================================
schema_version        version of this schema (``SCHEMA_VERSION``)
cell_id               content hash of everything that determines the cell (victim, defense, evaluation), and in a
                      sweep, of the sweep point too
cache_key             the cell's folder under ``cache/cells/`` (its metrics and predictions): equal to cell_id,
                      except in a sweep, where a cell several points share is computed once and recorded once per
                      point; empty in rows upgraded from version 4 or older (read as cell_id)
sweep                 the sweep point (:mod:`benchmark.sweeps`) as canonical JSON, e.g.
                      ``{"defenses.cleanclip.inmodal_weight": 2}``; empty outside a sweep
preset                preset name
attack                attack name; ``none`` for the benign control (a victim trained on clean pairs)
defense               defense name
seed                  the run seed (poisoning, initialisation, batch order, defense, trigger draws)
status                ``ok`` or ``failed``
reason                for failed cells, one line saying why (the traceback is in the cell's folder)
ca, ca_low, ca_high   clean top-1 accuracy on the test set and its 95% Wilson interval
ca_top5               clean top-5 accuracy
n_clean               number of clean test images
asr, asr_low,         attack success rate (non-target test images, triggered, classified as the target) and its
asr_high              95% Wilson interval; empty for the benign control
n_triggered           number of triggered test images (0 for the benign control)
target                the target class
n_classes             number of classes of the zero-shot test set (chance accuracy = 1 / n_classes); empty in
                      rows upgraded from schema version 2 or older
poison_count          number of poisoned training pairs (0 for the benign control)
attack_version        version of the attack class
attack_config         the attack's full config
defense_version       version of the defense class
defense_config        the defense's full config
defense_recipe        the finetuning recipe the defense trained with (the preset's ``[finetune]`` with the
                      defense's overrides) and ``tuning``: how those hyperparameters were chosen (the preset's
                      ``[tuning]`` note, or ``fixed in the preset``); empty for defenses that do not finetune
                      (training- and data-stage defenses train with the victim's recipe)
stage                 the defense's stage: ``post-training`` (a model in, a model out), ``training`` (it trains
                      the victim itself) or ``data`` (a detector: the runner removes its top-scored training
                      pairs and retrains the victim); ``post-training`` in rows upgraded from version 4 or older
removal_rate          data stage: the share of training pairs removed (the preset's ``[detection]``); else empty
auroc, auprc          data stage: the detector's scores against the poison manifest (area under the ROC curve,
                      average precision; :mod:`benchmark.detection_metrics`); empty for the benign control
tpr_at_1fpr,          data stage: the largest share of poisoned pairs flagged at a false-positive rate of at most
tpr_at_5fpr           1% and 5%
removed_precision,    data stage: the share of removed pairs that were poisoned, and of poisoned pairs removed
removed_recall        (recall empty for the benign control)
n_removed             data stage: the number of training pairs removed
model                 open_clip architecture of the victim
victim_objective      the objective the victim was trained with (the preset's ``[victim] objective``): ``clip``,
                      or ``clip+ssl`` (with ``(ssl_weight W)`` when W is not 1); ``clip`` in rows upgraded from
                      schema version 3 or older, which only had CLIP-trained victims
victim_init           how the victim started (the preset's ``[victim] init``): ``scratch`` (a random initialisation
                      trained on the poisoned pairs) or ``pretrained`` (a clean CLIP, the model's own weights or
                      one trained on the preset's disjoint ``[pretrain]`` pairs, finetuned on them); ``scratch`` in
                      rows upgraded from version 4 or older, and in version-5 rows written before the column
victim_key            cache key of the victim the defense was applied to
cleanbench_version    package version that produced the row
git_commit            commit of the cleanbench checkout, if any
device                device the cell ran on
torch_threads         the number of CPU threads torch used for the cell (``verify`` reruns a CPU cell bitwise
                      only at the same count); empty in rows upgraded from schema version 3 or older
cpu                   the CPU's model and the instruction set torch's kernels dispatched to, e.g. ``AMD EPYC
                      (AVX2)`` (:func:`benchmark.device.cpu_kind`; ``verify`` compares bitwise only on the same);
                      empty in rows upgraded from schema version 5 or older
attack_package,       provenance of the attack (:mod:`benchmark.provenance`): the distribution that provided it
attack_package_       (``cleanbench`` for built-ins, empty for a plugin file or a module no distribution
version,              installs), that distribution's version, and the SHA-256 of its source files; all empty for
attack_source_sha256  the benign control and in rows upgraded from schema version 3 or older
defense_package,      the same for the defense
defense_package_
version,
defense_source_sha256
time_poison_s         poisoning time (of the shared victim)
time_victim_s         victim training time (of the shared victim)
time_defense_s        time the defense took (for training- and data-stage defenses: all their training and scoring)
time_eval_s           evaluation time
finished_at           UTC timestamp (ISO 8601) when the cell finished
====================  ==========================================================================================
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from benchmark.errors import UserError
from benchmark.faults import failpoint
from benchmark.names import csv_safe
from benchmark.storage import write_text_atomic

RESULTS_FILE = "results.csv"  # in a run's output folder
GALLERY_FILE = "trigger_gallery.png"  # the trigger gallery `cleanbench run` draws beside it; the page embeds it
BENIGN_ATTACK = "none"  # the ``attack`` of the benign control: a victim trained on clean pairs
REFERENCE_DEFENSE = "none"  # the ``defense`` every other defense is compared with: the victim as trained
SCHEMA_VERSION = 6


def sweep_json(values: dict[str, Any]) -> str:
    """The ``sweep`` column of a sweep point's rows: its values as canonical JSON, empty without a sweep."""
    return json.dumps(values, sort_keys=True) if values else ""


def sweep_label(values: dict[str, Any]) -> str:
    """A sweep point as logs and pages name it: ``key=value`` pairs joined by ``, `` (empty without a sweep)."""
    return ", ".join(f"{key}={json.dumps(value) if isinstance(value, str) else value}" for key, value in values.items())
# Columns added since an older version, with the value its rows are read with: version 1 lacked
# ``defense_recipe``, versions 1-2 ``n_classes``, versions 1-3 ``victim_objective``, ``torch_threads`` and the
# provenance columns, versions 1-4 ``cache_key``, ``sweep``, ``stage``, ``removal_rate``, the detection metrics
# and ``victim_init``, versions 1-5 ``cpu``. Such files are read as the current version (the leaderboard) and,
# when a run resumes into one, rewritten as it. Version 5 gained columns before it was released: a version-5 file
# without one of them is read with its default too.
PROVENANCE_COLUMNS = ["attack_package", "attack_package_version", "attack_source_sha256",
                      "defense_package", "defense_package_version", "defense_source_sha256"]
DETECTION_COLUMNS = ["auroc", "auprc", "tpr_at_1fpr", "tpr_at_5fpr", "removed_precision", "removed_recall",
                     "n_removed"]
# The columns added in version N or later, with their defaults (what a file of an earlier version lacks):
_SINCE_6 = {"cpu": ""}
_SINCE_5 = {"cache_key": "", "sweep": "", "stage": "post-training", "removal_rate": "",
            **dict.fromkeys(DETECTION_COLUMNS, ""), "victim_init": "scratch", **_SINCE_6}
_SINCE_4 = {"victim_objective": "clip", "torch_threads": "", **dict.fromkeys(PROVENANCE_COLUMNS, ""), **_SINCE_5}
UPGRADABLE = {1: {"defense_recipe": "", "n_classes": "", **_SINCE_4},
              2: {"n_classes": "", **_SINCE_4},
              3: _SINCE_4,
              4: _SINCE_5,
              5: _SINCE_5}  # only the columns such a file lacks are filled (see above)
COLUMNS = [
    "schema_version", "cell_id", "cache_key", "sweep", "preset", "attack", "defense", "seed", "status", "reason",
    "ca", "ca_low", "ca_high", "ca_top5", "n_clean", "asr", "asr_low", "asr_high", "n_triggered",
    "target", "n_classes", "poison_count", "attack_version", "attack_config", "defense_version", "defense_config", "defense_recipe",
    "stage", "removal_rate", *DETECTION_COLUMNS,
    "model", "victim_objective", "victim_init", "victim_key", "cleanbench_version", "git_commit", "device",
    "torch_threads", "cpu",
    "time_poison_s", "time_victim_s", "time_defense_s", "time_eval_s", "finished_at", *PROVENANCE_COLUMNS,
]
METRIC_COLUMNS = ["ca", "ca_low", "ca_high", "ca_top5", "n_clean", "asr", "asr_low", "asr_high", "n_triggered"]


class ResultsFile:
    """Read and upsert rows of one ``results.csv``, keyed by ``cell_id``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, str]] = self._read()

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if "schema_version" not in header:
                raise UserError(f"{self.path} is not a cleanbench results file (no schema_version column); "
                                "choose another --out folder")
            rows = [_upgraded(row) for row in reader]
        versions = {row["schema_version"] for row in rows}
        if versions - {str(SCHEMA_VERSION)}:
            raise UserError(f"{self.path} was written with results schema version {', '.join(sorted(versions))}; "
                            f"this cleanbench writes version {SCHEMA_VERSION}. Use another --out folder.")
        return {row["cell_id"]: row for row in rows}

    def done(self, cell_id: str) -> bool:
        row = self.rows.get(cell_id)
        return row is not None and row["status"] == "ok"

    def refuse_changed_configs(self, cells: list[tuple[str, str, str, int, str, str]]) -> None:
        """Refuse to resume into this file under a changed config: a planned (preset, attack, defense, seed, sweep
        point) whose recorded row has another ``cell_id`` would mix two configurations in one results file."""
        recorded = {(r["preset"], r["attack"], r["defense"], r["seed"], r["sweep"]): r["cell_id"]
                    for r in self.rows.values()}
        for preset, attack, defense, seed, sweep, cell_id in cells:
            other = recorded.get((preset, attack, defense, str(seed), sweep))
            if other is not None and other != cell_id:
                raise UserError(f"{self.path} already holds {preset} / {attack} / {defense} seed {seed} under another "
                                "config (preset, attack or defense settings changed); use another --out folder")

    def upsert(self, row: dict[str, Any]) -> None:
        """Add or replace the row of ``row['cell_id']`` and rewrite the file atomically."""
        missing = set(COLUMNS) - set(row)
        if missing:
            raise ValueError(f"results row lacks columns: {sorted(missing)}")
        # A failed cell's reason is free text (an exception's message): neutralised if a spreadsheet would read it
        # as a formula. Every other column is data read back as written (``-`` is the benign control's
        # attack_version); names cannot start with a formula character (benchmark.names).
        values = {key: format_value(row[key]) for key in COLUMNS}
        self.rows[row["cell_id"]] = {**values, "reason": csv_safe(values["reason"])}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        write_text_atomic(self.path, buffer.getvalue())
        failpoint("row-appended")


def _upgraded(row: dict[str, str]) -> dict[str, str]:
    """A row of an older, compatible schema version as a row of this one (added columns at their defaults)."""
    added = UPGRADABLE.get(int(row["schema_version"])) if row["schema_version"].isdigit() else None
    if added is None:
        return row
    return {**added, **row, "schema_version": str(SCHEMA_VERSION)}


def format_value(value: Any) -> str:
    """A row's value as ``results.csv`` holds it (None and NaN empty, floats exact)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
