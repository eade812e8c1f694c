"""From result rows to the leaderboard: seed aggregates, effects against no defense, the validity gate, ranks.

``leaderboard.csv`` has one row per (preset, attack, defense); metrics are fractions in [0, 1], times seconds.

=======================  ===================================================================================
preset, attack, defense  the cell; attack ``none`` is the benign control (a victim trained on clean pairs). The
                         preset is followed by the victim's objective when that is not ``clip``
                         (``fmnist-tiny [clip+ssl victim]``): such victims are ranked apart
stage                    the defense's stage: ``post-training``, ``training`` (it trains the victim itself) or
                         ``data`` (a detector: its top-scored pairs removed, the victim retrained; its detection
                         metrics are in ``detection.csv``, :mod:`leaderboard.detection`)
status                   ``ok`` if at least one seed succeeded, ``failed`` if none did
n_seeds, seeds           number and list (``0;1;2``) of successful seeds, the only ones averaged
n_failed                 number of failed seeds (shown, never averaged)
took                     the attack took: its no-defense ASR mean ≥ the threshold and its no-defense victim is
                         not near chance; empty for the control
near_chance              the cell's mean CA is within ``CHANCE_MARGIN`` of chance (1 / n_classes): its ASR says
                         nothing (a model that guesses is not "defended"); empty where n_classes is unknown
ranked                   the cell counts towards its defense's rank (``ok``, the attack took, not near chance)
note                     why a cell is greyed, flagged or failed, in one line; empty otherwise
M_mean, M_std,           for M in ca, asr, ca_top5, delta_ca, delta_asr, der: mean and sample standard
M_ci_low, M_ci_high      deviation over seeds and the 95% confidence interval of the mean (see ci_method),
                         clipped to the metric's range ([0, 1]; [−1, 1] for the deltas)
ci_method                ``t`` (Student t over seeds, two or more seeds) or ``wilson`` (one seed: the ca and
                         asr intervals are that row's 95% Wilson interval over test images, and the
                         intervals of delta_ca, delta_asr and der are empty, as one seed says nothing of
                         their spread)
time_defense_s_mean      mean wall time of the defense (a training- or data-stage defense's includes the victim
                         it trains)
rank                     the defense's rank in its preset, on the cells it was ranked on; empty elsewhere
rank_group               the ranks the data cannot tell apart from this one (``1–2``; :mod:`leaderboard.rank_groups`)
evidence                 ``verified`` when every row of the cell comes from a bundle that ``cleanbench verify``
                         checked by rerunning some of its cells (:mod:`leaderboard.bundles`), else ``self-reported``
=======================  ===================================================================================

Definitions, per seed on the same (preset, attack, seed) victim, then aggregated over seeds:
ΔCA = CA(no defense) − CA(defense) and ΔASR = ASR(no defense) − ASR(defense), so a drop is positive; the
defense-effectiveness rate DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2 as BackdoorBench's paper defines it
(0.5 for no change, 1 for removing the backdoor at no CA cost). BackdoorBench's published code adds the CA drop
instead of subtracting it; we follow the paper. On the benign control, ΔCA is the defense's CA cost.

The ranking rule. A defense is ranked only while the model stays useful: its CA cost (mean ΔCA over seeds) on
the benign control and on every attacked victim must stay within a budget (``max_ca_cost``, 0.05 absolute by
default), and none of its cells may sit near chance accuracy. Otherwise it is listed with the reason, not
ranked. Ranked defenses are ordered by worst-case (largest) ASR over the attacks that took, ties broken by the
higher mean CA over those attacks; a defense without a successful cell on one of those attacks is not ranked.
DER is reported for comparability with BackdoorBench and never ranked by: it rewards wrecking the model (a
defense that sends CA to chance and ASR to 0 scores well above plain finetuning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import UserError
from benchmark.predictions import Predictions
from benchmark.results import BENIGN_ATTACK
from benchmark.results import REFERENCE_DEFENSE as NO_DEFENSE
from leaderboard import DEFAULT_MAX_CA_COST, DEFAULT_THRESHOLD
from leaderboard.compare import PAIRWISE_COLUMNS, pairwise
from leaderboard.rank_groups import rank_group_labels, rank_pairs

KEY = ["preset", "attack", "defense"]
METRICS = ["ca", "asr", "ca_top5", "delta_ca", "delta_asr", "der"]
BOUNDS = {"delta_ca": (-1.0, 1.0), "delta_asr": (-1.0, 1.0)}  # the others are fractions in [0, 1]
WILSON_METRICS = {"ca": ("ca_low", "ca_high"), "asr": ("asr_low", "asr_high")}
TOLERANCE = 1e-9  # a mean of seed values that equals the budget counts as within it, whatever its float rounding
CHANCE_MARGIN = 0.05  # a mean CA less than 5 points above chance is "near chance": its ASR is meaningless
LEADERBOARD_COLUMNS = (
    KEY + ["stage", "status", "n_seeds", "seeds", "n_failed", "took", "near_chance", "ranked", "note"]
    + [f"{metric}_{stat}" for metric in METRICS for stat in ("mean", "std", "ci_low", "ci_high")]
    + ["ci_method", "time_defense_s_mean", "rank", "rank_group", "evidence"]
)
VERIFIED, SELF_REPORTED = "verified", "self-reported"  # a row's ``evidence`` (leaderboard.bundles)


@dataclass(frozen=True)
class Leaderboard:
    """The aggregated tables one results set gives: per-cell rows, per-defense ranking, per-seed effects."""

    cells: pd.DataFrame
    ranking: pd.DataFrame
    per_seed: pd.DataFrame
    threshold: float
    max_ca_cost: float = DEFAULT_MAX_CA_COST
    pairwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIRWISE_COLUMNS))


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


def build(results: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, max_ca_cost: float = DEFAULT_MAX_CA_COST,
          predictions: dict[str, Predictions] | None = None) -> Leaderboard:
    """Aggregate validated result rows (see :func:`leaderboard.load.load_results`) into a :class:`Leaderboard`.

    ``predictions`` (cell id → per-image predictions, where cells kept them) adds the per-image McNemar tests to
    the paired comparisons; without them defenses are compared over seeds only.
    """
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: must be in [0, 1]")
    if not 0.0 <= max_ca_cost <= 1.0:
        raise UserError(f"--max-ca-cost {max_ca_cost}: must be in [0, 1] (absolute CA, e.g. 0.05 for 5 points)")
    predictions = predictions or {}
    if "evidence" not in results.columns:  # rows read without leaderboard.bundles: nobody checked them
        results = results.assign(evidence=SELF_REPORTED)
    effects = per_seed_effects(results)
    cells = pd.DataFrame([_cell_row(key, group, effects) for key, group in results.groupby(KEY, sort=True)])
    cells = _gate(cells, threshold)
    ranking = rank_defenses(cells, max_ca_cost)
    took = {preset: _took(cells, preset) for preset in cells["preset"].unique()}
    ranked_pairs = rank_pairs(ranking, effects, took, predictions)
    ranking["rank_group"] = rank_group_labels(ranking, ranked_pairs)
    comparisons = pd.concat([frame for frame in (pairwise(effects, predictions), ranked_pairs) if len(frame)]
                            or [pd.DataFrame(columns=PAIRWISE_COLUMNS)], ignore_index=True)
    ranks = ranking.set_index(["preset", "defense"])[["rank", "rank_group"]]
    counted = list(zip(cells["preset"], cells["defense"], cells["ranked"]))
    cells["rank"] = pd.array([ranks["rank"].get((p, d), pd.NA) if c else pd.NA for p, d, c in counted], dtype="Int64")
    cells["rank_group"] = [ranks["rank_group"].get((p, d), "") if c else "" for p, d, c in counted]  # "": unranked
    return Leaderboard(cells[LEADERBOARD_COLUMNS], ranking, effects, threshold, max_ca_cost, comparisons)


def _evidence(values: pd.Series) -> str:
    """``verified`` only when every value is."""
    return VERIFIED if len(values) and (values == VERIFIED).all() else SELF_REPORTED


def _took(cells: pd.DataFrame, preset: str) -> list[str]:
    in_preset = cells[cells["preset"] == preset]
    return sorted(in_preset.loc[in_preset["took"].fillna(False).astype(bool), "attack"].unique())


def _cell_row(key: tuple, group: pd.DataFrame, effects: pd.DataFrame) -> dict:
    preset, attack, defense = key
    ok = effects[(effects["preset"] == preset) & (effects["attack"] == attack) & (effects["defense"] == defense)]
    failed = group[group["status"] == "failed"]
    row: dict = {"preset": preset, "attack": attack, "defense": defense, "stage": group["stage"].iloc[0],
                 "status": "ok" if len(ok) else "failed", "n_seeds": len(ok),
                 "seeds": ";".join(str(seed) for seed in sorted(ok["seed"])), "n_failed": len(failed),
                 "note": "" if len(ok) else f"{len(failed)} of {len(failed)} seeds failed: {failed['reason'].iloc[0]}",
                 "ci_method": "wilson" if len(ok) == 1 else "t", "evidence": _evidence(group["evidence"])}
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
    classes = group["n_classes"].dropna()
    row["near_chance"] = (pd.NA if not len(ok) or classes.empty
                          else bool(row["ca_mean"] - 1.0 / int(classes.iloc[0]) < CHANCE_MARGIN))
    if row["near_chance"] is True:  # said first, and kept beside a note on failed seeds
        chance = f"ASR meaningless: CA {row['ca_mean']:.3f} is near chance ({1.0 / int(classes.iloc[0]):.3f})"
        row["note"] = "; ".join(part for part in (chance, row["note"]) if part)
    return row


def _gate(cells: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Mark the attacks that took (no-defense ASR ≥ threshold, on a victim not near chance); greyed cells get
    their reason as the note."""
    cells = cells.assign(near_chance=pd.array(cells["near_chance"], dtype="boolean"))
    baseline = cells[(cells["defense"] == NO_DEFENSE) & (cells["status"] == "ok")].set_index(["preset", "attack"])
    took, notes = [], []
    for row in cells.itertuples():
        if row.attack == BENIGN_ATTACK:
            took.append(pd.NA)
            notes.append(row.note)
            continue
        asr = baseline["asr_mean"].get((row.preset, row.attack), np.nan)
        at_chance = baseline["near_chance"].get((row.preset, row.attack), pd.NA)
        victim_at_chance = not pd.isna(at_chance) and bool(at_chance)
        took.append(bool(asr >= threshold) and not victim_at_chance)
        reason = ""
        if np.isnan(asr):
            reason = "attack not checked: no successful no-defense cell"
        elif victim_at_chance and row.defense != NO_DEFENSE:
            reason = "attack not checked: its no-defense victim is near chance accuracy"
        elif asr < threshold:
            reason = f"attack did not take: no-defense ASR {asr:.3f} < {threshold:g}"
        notes.append("; ".join(part for part in (reason, row.note) if part))
    cells = cells.assign(took=pd.array(took, dtype="boolean"), note=notes)
    cells["ranked"] = ((cells["status"] == "ok") & cells["took"].fillna(False).astype(bool)
                       & ~cells["near_chance"].fillna(False).astype(bool))
    return cells


def rank_defenses(cells: pd.DataFrame, max_ca_cost: float = DEFAULT_MAX_CA_COST) -> pd.DataFrame:
    """One row per (preset, defense): worst-case ASR over the attacks that took, mean CA there, CA cost, whether
    it stays useful (the ranking rule in this module's docstring), the Pareto front, rank."""
    rows = []
    took_in = {preset: _took(cells, preset) for preset in cells["preset"].unique()}
    for (preset, defense), group in cells.groupby(["preset", "defense"], sort=True):
        took = took_in[preset]
        ok = group[group["status"] == "ok"].set_index("attack")
        missing = [attack for attack in took if attack not in ok.index]
        control = ok.loc[[BENIGN_ATTACK]] if BENIGN_ATTACK in ok.index else ok.iloc[:0]
        costs = ok["delta_ca_mean"].dropna()
        row = {"preset": preset, "defense": defense, "stage": group["stage"].iloc[0], "attacks": len(took), "worst_asr": np.nan, "worst_attack": "",
               "mean_ca": np.nan, "ca_cost": control["delta_ca_mean"].iloc[0] if len(control) else np.nan,
               "max_ca_cost": float(costs.max()) if len(costs) else np.nan,
               "max_ca_cost_on": _victim_name(str(costs.idxmax())) if len(costs) else "",
               "useful": not len(costs) or bool(costs.max() <= max_ca_cost + TOLERANCE), "note": "",
               "time_defense_s": group["time_defense_s_mean"].mean(), "evidence": _evidence(group["evidence"])}
        if not missing and took:
            asr = ok.loc[took, "asr_mean"]
            row.update(worst_asr=float(asr.max()), worst_attack=str(asr.idxmax()),
                       mean_ca=float(ok.loc[took, "ca_mean"].mean()))
        at_chance = sorted(ok.index[ok["near_chance"].fillna(False).astype(bool)])
        if not took:
            row["note"] = "no attack took: nothing to rank on"
        elif not row["useful"]:  # the first reason: a wrecked model is never ranked, whatever else it lacks
            row["note"] = (f"not ranked: CA cost {row['max_ca_cost']:.3f} > {max_ca_cost:g} "
                           f"(on {row['max_ca_cost_on']})")
        elif missing:
            row["note"] = f"not ranked: no successful cell for {', '.join(missing)}"
        elif at_chance:
            row["note"] = f"not ranked: CA near chance on {', '.join(at_chance)}"
        row["ranked"] = not row["note"]
        rows.append(row)
    ranking = pd.DataFrame(rows)
    ranking["pareto"], ranking["beaten_by"] = _pareto(ranking)
    ranking["rank"] = pd.array([pd.NA] * len(ranking), dtype="Int64")
    for preset, group in ranking.groupby("preset"):
        scored = group[group["ranked"]]
        order = list(zip(scored["worst_asr"], -scored["mean_ca"]))
        ranking.loc[scored.index, "rank"] = [1 + sum(other < mine for other in order) for mine in order]
    return ranking.sort_values(["preset", "rank", "defense"], na_position="last").reset_index(drop=True)


def _victim_name(attack: str) -> str:
    return "the benign control" if attack == BENIGN_ATTACK else attack


def _pareto(ranking: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per defense, the defenses of its preset that beat it on both axes (a worst-case ASR as low and a mean CA as
    high, one strictly better), and whether there are none (it is on the Pareto front of mean CA against
    worst-case ASR). Defenses without both figures are on no front."""
    front = pd.Series(False, index=ranking.index)
    beaten_by = pd.Series("", index=ranking.index, dtype=object)
    for _, group in ranking.dropna(subset=["worst_asr", "mean_ca"]).groupby("preset"):
        for index, row in group.iterrows():
            dominates = ((group["worst_asr"] <= row["worst_asr"]) & (group["mean_ca"] >= row["mean_ca"])
                         & ((group["worst_asr"] < row["worst_asr"]) | (group["mean_ca"] > row["mean_ca"])))
            front[index] = not bool(dominates.any())
            beaten_by[index] = ", ".join(sorted(group.loc[dominates, "defense"]))
    return front, beaten_by


def write_csv(board: Leaderboard, path: Path) -> None:
    """Write ``leaderboard.csv`` (schema in this module's docstring) atomically."""
    write_table(board.cells, path)


def write_pairwise_csv(board: Leaderboard, path: Path) -> None:
    """Write ``pairwise.csv`` (schema in :mod:`leaderboard.compare`) atomically."""
    write_table(board.pairwise, path)


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` as CSV atomically, every text cell neutralised against spreadsheet formulas
    (:func:`benchmark.names.csv_safe`); numeric columns are written as numbers. A carriage return inside a text
    cell is written as a newline: the csv module quotes a cell holding a newline but not one holding a lone ``\\r``,
    which a spreadsheet would read as the start of a new row (and of a new, unneutralised cell)."""
    from benchmark.names import csv_safe
    from benchmark.storage import write_text_atomic

    def safe_cell(value: object) -> object:
        value = csv_safe(value)
        return value.replace("\r\n", "\n").replace("\r", "\n") if isinstance(value, str) else value

    safe = table.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(safe_cell)
    safe.columns = [csv_safe(str(column)) for column in safe.columns]
    write_text_atomic(path, safe.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
