"""From result rows to the leaderboard: seed aggregates, effects against no defense, the validity gate, ranks.

``leaderboard.csv`` has one row per (preset, attack, defense); metrics are fractions in [0, 1], times seconds.

=======================  ===================================================================================
preset, attack, defense  the cell; attack ``none`` is the benign control (a victim trained on clean pairs)
status                   ``ok`` if at least one seed succeeded, ``failed`` if none did
n_seeds, seeds           number and list (``0;1;2``) of successful seeds, the only ones averaged
n_failed                 number of failed seeds (shown, never averaged)
took                     the attack took: its no-defense ASR mean ≥ the threshold; empty for the control
ranked                   the cell counts towards its defense's rank (``ok`` and the attack took)
note                     why a cell is greyed or failed, in one line; empty otherwise
M_mean, M_std,           for M in ca, asr, ca_top5, delta_ca, delta_asr, der: mean and sample standard
M_ci_low, M_ci_high      deviation over seeds and the 95% confidence interval of the mean (see ci_method),
                         clipped to the metric's range ([0, 1]; [−1, 1] for the deltas)
ci_method                ``t`` (Student t over seeds, two or more seeds) or ``wilson`` (one seed: the ca and
                         asr intervals are that row's 95% Wilson interval over test images, and the
                         intervals of delta_ca, delta_asr and der are empty, as one seed says nothing of
                         their spread)
time_defense_s_mean      mean wall time of the defense
rank                     the defense's rank in its preset, on the cells it was ranked on; empty elsewhere
=======================  ===================================================================================

Definitions, per seed on the same (preset, attack, seed) victim, then aggregated over seeds:
ΔCA = CA(no defense) − CA(defense) and ΔASR = ASR(no defense) − ASR(defense), so a drop is positive; the
defense-effectiveness rate DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2 as BackdoorBench's paper defines it
(0.5 for no change, 1 for removing the backdoor at no CA cost). BackdoorBench's published code adds the CA drop
instead of subtracting it; we follow the paper. On the benign control, ΔCA is the defense's CA cost.
A defense's rank orders it by its worst-case (largest) ASR over the attacks that took, ties broken by the
higher mean CA over those attacks; a defense without a successful cell on one of those attacks is not ranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import UserError
from leaderboard.load import BENIGN_ATTACK

NO_DEFENSE = "none"
KEY = ["preset", "attack", "defense"]
METRICS = ["ca", "asr", "ca_top5", "delta_ca", "delta_asr", "der"]
BOUNDS = {"delta_ca": (-1.0, 1.0), "delta_asr": (-1.0, 1.0)}  # the others are fractions in [0, 1]
WILSON_METRICS = {"ca": ("ca_low", "ca_high"), "asr": ("asr_low", "asr_high")}
DEFAULT_THRESHOLD = 0.5
LEADERBOARD_COLUMNS = (
    KEY + ["status", "n_seeds", "seeds", "n_failed", "took", "ranked", "note"]
    + [f"{metric}_{stat}" for metric in METRICS for stat in ("mean", "std", "ci_low", "ci_high")]
    + ["ci_method", "time_defense_s_mean", "rank"]
)


@dataclass(frozen=True)
class Leaderboard:
    """The aggregated tables one results set gives: per-cell rows, per-defense ranking, per-seed effects."""

    cells: pd.DataFrame
    ranking: pd.DataFrame
    per_seed: pd.DataFrame
    threshold: float


def der(delta_asr: pd.Series | float, delta_ca: pd.Series | float) -> pd.Series | float:
    """BackdoorBench's defense-effectiveness rate from ASR and CA drops (NaN stays NaN)."""
    return (np.clip(delta_asr, 0, None) - np.clip(delta_ca, 0, None) + 1) / 2


def per_seed_effects(results: pd.DataFrame) -> pd.DataFrame:
    """The successful rows with ΔCA, ΔASR and DER against the no-defense row of the same victim."""
    ok = results[results["status"] == "ok"]
    base = ok.loc[ok["defense"] == NO_DEFENSE, ["preset", "attack", "seed", "ca", "asr"]]
    base = base.rename(columns={"ca": "base_ca", "asr": "base_asr"})
    merged = ok.merge(base, on=["preset", "attack", "seed"], how="left")
    merged["delta_ca"] = merged["base_ca"] - merged["ca"]
    merged["delta_asr"] = merged["base_asr"] - merged["asr"]
    merged["der"] = der(merged["delta_asr"], merged["delta_ca"])
    return merged


def mean_interval(values: pd.Series) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and 95% Student-t interval of the mean; NaN where undefined."""
    values = values.dropna().astype(float)
    n = len(values)
    if n == 0:
        return (np.nan,) * 4
    mean = float(values.mean())
    if n == 1:
        return mean, np.nan, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


def build(results: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> Leaderboard:
    """Aggregate validated result rows (see :func:`leaderboard.load.load_results`) into a :class:`Leaderboard`."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: must be in [0, 1]")
    effects = per_seed_effects(results)
    cells = pd.DataFrame([_cell_row(key, group, effects) for key, group in results.groupby(KEY, sort=True)])
    cells = _gate(cells, threshold)
    ranking = rank_defenses(cells)
    ranks = ranking.set_index(["preset", "defense"])["rank"]
    cells["rank"] = [ranks.get((p, d), pd.NA) if counted else pd.NA
                     for p, d, counted in zip(cells["preset"], cells["defense"], cells["ranked"])]
    cells["rank"] = cells["rank"].astype("Int64")
    return Leaderboard(cells[LEADERBOARD_COLUMNS], ranking, effects, threshold)


def _cell_row(key: tuple, group: pd.DataFrame, effects: pd.DataFrame) -> dict:
    preset, attack, defense = key
    ok = effects[(effects["preset"] == preset) & (effects["attack"] == attack) & (effects["defense"] == defense)]
    failed = group[group["status"] == "failed"]
    row: dict = {"preset": preset, "attack": attack, "defense": defense,
                 "status": "ok" if len(ok) else "failed", "n_seeds": len(ok),
                 "seeds": ";".join(str(seed) for seed in sorted(ok["seed"])), "n_failed": len(failed),
                 "note": "" if len(ok) else f"{len(failed)} of {len(failed)} seeds failed: {failed['reason'].iloc[0]}",
                 "ci_method": "wilson" if len(ok) == 1 else "t"}
    for metric in METRICS:
        mean, std, low, high = mean_interval(ok[metric])
        if len(ok) == 1 and metric in WILSON_METRICS:
            low, high = (float(ok[column].iloc[0]) for column in WILSON_METRICS[metric])
        lowest, highest = BOUNDS.get(metric, (0.0, 1.0))
        low, high = np.clip(low, lowest, highest), np.clip(high, lowest, highest)
        row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci_low": low,
                    f"{metric}_ci_high": high})
    row["time_defense_s_mean"] = ok["time_defense_s"].mean() if len(ok) else np.nan
    if len(ok) and len(failed):
        row["note"] = f"{len(failed)} of {len(group)} seeds failed (not averaged): {failed['reason'].iloc[0]}"
    return row


def _gate(cells: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Mark the attacks that took (no-defense ASR ≥ threshold); greyed cells get their reason as the note."""
    baseline = cells[(cells["defense"] == NO_DEFENSE) & (cells["status"] == "ok")]
    base_asr = baseline.set_index(["preset", "attack"])["asr_mean"]
    took, notes = [], []
    for row in cells.itertuples():
        asr = base_asr.get((row.preset, row.attack), np.nan)
        if row.attack == BENIGN_ATTACK:
            took.append(pd.NA)
            notes.append(row.note)
            continue
        took.append(bool(asr >= threshold))
        reason = ""
        if np.isnan(asr):
            reason = "attack not checked: no successful no-defense cell"
        elif asr < threshold:
            reason = f"attack did not take: no-defense ASR {asr:.3f} < {threshold:g}"
        notes.append("; ".join(part for part in (reason, row.note) if part))
    cells = cells.assign(took=pd.array(took, dtype="boolean"), note=notes)
    cells["ranked"] = (cells["status"] == "ok") & cells["took"].fillna(False).astype(bool)
    return cells


def rank_defenses(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (preset, defense): worst-case ASR over the attacks that took, mean CA there, CA cost, rank."""
    rows = []
    for (preset, defense), group in cells.groupby(["preset", "defense"], sort=True):
        in_preset = cells[cells["preset"] == preset]
        took = sorted(in_preset.loc[in_preset["took"].fillna(False).astype(bool), "attack"].unique())
        counted = group[group["ranked"]].set_index("attack")
        missing = [attack for attack in took if attack not in counted.index]
        control = group[(group["attack"] == BENIGN_ATTACK) & (group["status"] == "ok")]
        row = {"preset": preset, "defense": defense, "attacks": len(took),
               "worst_asr": np.nan, "worst_attack": "", "mean_ca": np.nan,
               "ca_cost": control["delta_ca_mean"].iloc[0] if len(control) else np.nan,
               "time_defense_s": group["time_defense_s_mean"].mean(), "note": ""}
        if not took:
            row["note"] = "no attack took: nothing to rank on"
        elif missing:
            row["note"] = f"not ranked: no successful cell for {', '.join(missing)}"
        else:
            asr = counted.loc[took, "asr_mean"]
            row.update(worst_asr=float(asr.max()), worst_attack=str(asr.idxmax()),
                       mean_ca=float(counted.loc[took, "ca_mean"].mean()))
        rows.append(row)
    ranking = pd.DataFrame(rows)
    ranking["rank"] = pd.array([pd.NA] * len(ranking), dtype="Int64")
    for preset, group in ranking.groupby("preset"):
        scored = group.dropna(subset=["worst_asr"])
        order = list(zip(scored["worst_asr"], -scored["mean_ca"]))
        ranking.loc[scored.index, "rank"] = [1 + sum(other < mine for other in order) for mine in order]
    return ranking.sort_values(["preset", "rank", "defense"], na_position="last").reset_index(drop=True)


def write_csv(board: Leaderboard, path: Path) -> None:
    """Write ``leaderboard.csv`` (schema in this module's docstring) atomically."""
    from benchmark.storage import write_text_atomic

    write_text_atomic(path, board.cells.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
