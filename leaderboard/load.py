"""Reading results CSVs and checking them against the results schema (``benchmark.results``).

The schema lives in :mod:`benchmark.results`; this module only checks files against it, so a hand-edited or
foreign file fails here with one line naming the file, the row and the column, not later with a pandas
traceback. Files written under different schema versions are refused rather than mixed: the columns may mean
different things.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from benchmark.cache_layout import CacheLayout, is_cache_key
from benchmark.errors import UserError
from benchmark.names import NAME_RULE, is_name
from benchmark.predictions import Predictions, PredictionsError, load_predictions
from benchmark.results import (BENIGN_ATTACK, COLUMNS, DETECTION_COLUMNS, METRIC_COLUMNS, RESULTS_FILE,
                               SCHEMA_VERSION, UPGRADABLE, sweep_label)
from benchmark.stages import STAGES

INT_COLUMNS = ("schema_version", "seed", "n_clean", "n_triggered", "poison_count", "n_classes", "torch_threads",
               "n_removed")
FRACTION_COLUMNS = ("ca", "ca_low", "ca_high", "ca_top5", "asr", "asr_low", "asr_high", "removal_rate",
                    *(column for column in DETECTION_COLUMNS if column != "n_removed"))
SECONDS_COLUMNS = ("time_poison_s", "time_victim_s", "time_defense_s", "time_eval_s")
RESULT_COLUMNS = ("status", *METRIC_COLUMNS, *DETECTION_COLUMNS)  # what two runs of one cell must agree on
REQUIRED_TEXT = ("cell_id", "preset", "attack", "defense", "status")
NAME_COLUMNS = ("preset", "attack", "defense")  # names (benchmark.names): checked in every row read
REQUIRED_WHEN_OK = ("ca", "ca_low", "ca_high", "n_clean")
ASR_COLUMNS = ("asr", "asr_low", "asr_high")
STATUSES = ("ok", "failed")


def resolve_results_path(path: Path) -> Path:
    """A results file, or a run's output folder holding ``results.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"no results file at {path}")
    return path


def load_results(paths: list[Path]) -> pd.DataFrame:
    """Read and validate results files into one typed table.

    Adds ``source`` (file) and ``line`` (line number in it) so later messages can point back to the row. Rows
    with the same ``cell_id`` in several files are the same cell: the last file wins, with a warning where their
    results differ (:func:`_warn_unreproduced`).
    """
    if not paths:
        raise UserError("no results files given")
    raws = [(path, _upgraded(_read_raw(path))) for path in map(resolve_results_path, paths)]
    _check_versions(raws)
    table = pd.concat([_typed(path, raw) for path, raw in raws], ignore_index=True)
    _warn_unreproduced(table)
    table = table.drop_duplicates("cell_id", keep="last").reset_index(drop=True)
    table["preset"] = setting_names(table)
    _check_conflicts(table)
    return table


def check_results_file(path: Path, label: str | None = None) -> pd.DataFrame:
    """One results file read and checked against the results schema, as :func:`load_results` checks each file it
    reads (UTF-8 CSV, one schema version, every column, typed values, names that are names); messages name it as
    ``label`` (e.g. ``bundle.zip:results.csv``) where given. Returns its typed table."""
    shown = Path(label) if label else Path(path)
    raw = _upgraded(_read_raw(Path(path), shown))
    _check_versions([(shown, raw)])
    return _typed(shown, raw)


def setting_names(table: pd.DataFrame) -> pd.Series:
    """The setting each row belongs to: its preset, followed by how the victim differs from a plain CLIP-trained
    victim from scratch, its start and its objective (``fmnist-tiny [clip+ssl victim]``, ``fmnist-tiny-pretrained
    [pretrained victim]``, ``fmnist-tiny [pretrained clip+ssl victim]``), and by its sweep point (``fmnist-tiny
    [defenses.cleanclip.inmodal_weight=2]``). Victims that start differently or are trained with different
    objectives, and sweep points, are different settings, so everything downstream (means, ranks, comparisons)
    keeps them apart, also when two runs used the same preset name; a setting's name never depends on which other
    files are loaded with it."""
    objective = table["victim_objective"].astype(str)
    objective = objective.where(~objective.isin(["clip", ""]), "")
    start = table["victim_init"].astype(str).map(lambda init: "pretrained" if init == "pretrained" else "")
    victim = (start + " " + objective).str.strip()
    names = table["preset"].where(victim == "", table["preset"] + " [" + victim + " victim]")
    points = table["sweep"].fillna("").astype(str).map(lambda text: sweep_label(json.loads(text)) if text else "")
    return names.where(points == "", names + " [" + points + "]")


def _read_raw(path: Path, shown: Path | None = None) -> pd.DataFrame:
    """The file as strings; only ``schema_version`` is checked here, so the version check comes first. Messages
    name the file as ``shown`` where given."""
    read, path = path, shown or path
    try:
        raw = pd.read_csv(read, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="strict")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file, not a cleanbench results file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
    if "schema_version" not in raw.columns:
        raise UserError(f"{path}: missing column 'schema_version'; not a cleanbench results file")
    if raw.empty:
        raise UserError(f"{path}: no result rows")
    return raw


def _upgraded(raw: pd.DataFrame) -> pd.DataFrame:
    """A file written wholly under an older, compatible schema version, read as the current one: the columns
    added since then are filled with their documented defaults (``benchmark.results.UPGRADABLE``)."""
    versions = set(raw["schema_version"])
    if len(versions) != 1 or not _is_int(next(iter(versions))):
        return raw  # mixed or malformed versions are reported by _check_versions
    added = UPGRADABLE.get(int(next(iter(versions))))
    if added is None:
        return raw
    raw = raw.assign(**{column: default for column, default in added.items() if column not in raw.columns})
    return raw.assign(schema_version=str(SCHEMA_VERSION))


def _typed(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    """Check columns and every row, then convert the numeric columns; empty cells become missing values."""
    missing = [column for column in COLUMNS if column not in raw.columns]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; not a cleanbench results file of this schema")
    unknown = [column for column in raw.columns if column not in COLUMNS]
    if unknown:
        raise UserError(f"{path}: unknown column {unknown[0]!r}; results schema version {SCHEMA_VERSION} "
                        "does not have it")
    table = raw[COLUMNS].copy()
    for index, row in enumerate(raw.to_dict("records")):
        _check_row(path, index, row)
    for column in INT_COLUMNS:
        table[column] = pd.to_numeric(table[column].replace("", None)).astype("Int64")
    for column in FRACTION_COLUMNS + SECONDS_COLUMNS:
        table[column] = pd.to_numeric(table[column].replace("", None)).astype(float)
    table["source"] = str(path)
    table["line"] = range(2, len(table) + 2)
    return table


def _where(path: Path, index: int, column: str) -> str:
    return f"{path}, row {index + 1} (line {index + 2}), column {column!r}"


def _check_row(path: Path, index: int, row: dict[str, str]) -> None:
    """Raise on the first bad value of one row, naming file, row and column."""
    for column in REQUIRED_TEXT:
        if not row[column].strip():
            raise UserError(f"{_where(path, index, column)}: empty; every row needs it")
    for column in NAME_COLUMNS:  # the preset's name as run; the leaderboard adds its victim and sweep labels later
        if not is_name(row[column]):
            shown = repr(row[column]) if len(repr(row[column])) <= 60 else repr(row[column])[:57] + "..."
            raise UserError(f"{_where(path, index, column)}: {shown} is not a name: {NAME_RULE}")
    for column in INT_COLUMNS:
        value = row[column]
        if value == "" and column not in ("schema_version", "seed"):
            continue
        if not _is_int(value):
            raise UserError(f"{_where(path, index, column)}: expected an integer, got {value!r}")
    if row["stage"] not in STAGES:
        raise UserError(f"{_where(path, index, 'stage')}: expected one of {', '.join(STAGES)}, "
                        f"got {row['stage']!r}")
    if row["status"] not in STATUSES:
        raise UserError(f"{_where(path, index, 'status')}: expected one of {', '.join(STATUSES)}, "
                        f"got {row['status']!r}")
    for column in FRACTION_COLUMNS + SECONDS_COLUMNS:
        value = row[column]
        if value == "":
            continue
        number = _as_float(value)
        if number is None:
            raise UserError(f"{_where(path, index, column)}: expected a number, got {value!r}")
        upper = 1.0 if column in FRACTION_COLUMNS else math.inf
        if not 0.0 <= number <= upper:
            allowed = "[0, 1]" if column in FRACTION_COLUMNS else "≥ 0"
            raise UserError(f"{_where(path, index, column)}: {value} is outside {allowed}")
    if row["status"] == "ok":
        required = REQUIRED_WHEN_OK + (ASR_COLUMNS if row["attack"] != BENIGN_ATTACK else ())
        for column in required:
            if row[column] == "":
                raise UserError(f"{_where(path, index, column)}: empty in an 'ok' row")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _as_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _check_versions(frames: list[tuple[Path, pd.DataFrame]]) -> None:
    """Refuse to mix schema versions, within a file or across files, and refuse versions we cannot read."""
    versions: dict[str, str] = {}
    for path, frame in frames:
        for index, version in enumerate(frame["schema_version"]):
            if not _is_int(version):
                raise UserError(f"{_where(path, index, 'schema_version')}: expected an integer, got {version!r}")
            versions.setdefault(str(int(version)), str(path))
    if len(versions) > 1:
        listed = "; ".join(f"version {version} in {path}" for version, path in sorted(versions.items()))
        raise UserError(f"refusing to mix results schema versions ({listed}); "
                        "build one leaderboard per version")
    (version, path), = versions.items()
    if int(version) != SCHEMA_VERSION:
        raise UserError(f"{path} was written with results schema version {version}; "
                        f"this cleanbench reads version {SCHEMA_VERSION}")


def _warn_unreproduced(table: pd.DataFrame) -> None:
    """Warn when one cell (same ``cell_id``: same data, code, config and seed) has different results in two rows.

    Such rows are two runs that did not reproduce each other (another machine's CPU kernels, another thread count,
    or a nondeterministic method); keeping the last one silently would hide that from a merged leaderboard."""
    repeated = table[table.duplicated("cell_id", keep=False)]
    clashes = [group for _, group in repeated.groupby("cell_id", sort=False)
               if len(group[list(RESULT_COLUMNS)].astype(str).drop_duplicates()) > 1]
    if not clashes:
        return
    group = clashes[0]
    results = group[list(RESULT_COLUMNS)].astype(str).fillna("")  # pandas' str dtype keeps NaN, and NaN != NaN
    unlike_last = results != results.iloc[-1]
    position = int(unlike_last.any(axis=1).to_numpy().argmax())  # the first row the used (last) one does not repeat
    first, last = group.iloc[position], group.iloc[-1]
    columns = ", ".join(unlike_last.columns[unlike_last.iloc[position].to_numpy()])
    warnings.warn(f"{len(clashes)} cell(s) have different results in different rows, so one run did not reproduce "
                  f"the other; the last row is used. E.g. {first['attack']} × {first['defense']} seed {first['seed']}: "
                  f"CA {_four_places(first['ca'])}, ASR {_four_places(first['asr'])} ({first['source']} line "
                  f"{first['line']}) against CA {_four_places(last['ca'])}, ASR {_four_places(last['asr'])} "
                  f"({last['source']} line {last['line']}); they differ in {columns}", stacklevel=3)


def _four_places(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.4f}"


def _check_conflicts(table: pd.DataFrame) -> None:
    """Refuse two different cells for the same (preset, attack, defense, seed): their mean would mix configs."""
    key = ["preset", "attack", "defense", "seed"]
    clashes = table[table.duplicated(key, keep=False)]
    if clashes.empty:
        return
    first, second = clashes.sort_values(key).head(2).to_dict("records")
    raise UserError(
        f"{first['source']} line {first['line']} and {second['source']} line {second['line']} are both "
        f"{first['preset']} / {first['attack']} / {first['defense']} seed {first['seed']} but different cells "
        "(another config or version); build a leaderboard from one configuration at a time")


def load_cell_predictions(results: pd.DataFrame) -> dict[str, Predictions]:
    """The per-image predictions of every ``ok`` row that has them, keyed by ``cell_id``: the predictions file of
    the row's cache folder beside its results file (:meth:`benchmark.cache_layout.CacheLayout.row_predictions_path`;
    :mod:`benchmark.predictions`). Folders written before predictions existed simply have none. A damaged or
    inconsistent file is skipped with a warning, never trusted."""
    found: dict[str, Predictions] = {}
    for row in results[results["status"] == "ok"].itertuples():
        if not is_cache_key(row.cell_id):
            continue  # hand-made or foreign ids name no cache folder
        path = CacheLayout.of_run(Path(row.source).parent).row_predictions_path(
            {"cell_id": row.cell_id, "cache_key": row.cache_key})
        if path is None or not path.is_file():
            continue
        try:
            predictions = load_predictions(path)
        except PredictionsError as error:
            warnings.warn(f"ignoring predictions: {error}", stacklevel=2)
            continue
        if len(predictions.clean_pred) != row.n_clean or (
                row.attack != BENIGN_ATTACK and len(predictions.triggered_pred) != row.n_triggered):
            warnings.warn(f"ignoring predictions: {path} does not match its row ({row.source} line {row.line})",
                          stacklevel=2)
            continue
        found[row.cell_id] = predictions
    return found
