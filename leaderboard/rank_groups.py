"""Rank groups: the ranks a defense could hold given what the data can and cannot separate.

The ranking orders defenses by worst-case ASR over the attacks that took. Two ranked defenses are compared on
the same quantity, paired: each seed's worst case (the largest ASR over those attacks, on that seed's victims).
With two or more common seeds the test is a paired t over seeds; with one, an exact McNemar test over the
triggered test images (each defense's outcome on its worst attack of that seed: the images are the same
non-target test images, whichever trigger fooled them). Tests are :mod:`leaderboard.compare`'s.

A defense's rank group runs from 1 + the number of defenses significantly better than it to the number of
ranked defenses minus those significantly worse (the interval of ranks consistent with the pairwise verdicts,
as in rank-interval leaderboards): ``1–2`` says the data cannot tell it from the defense beside it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from benchmark.predictions import Predictions
from leaderboard.compare import PAIRWISE_COLUMNS, compare_paired, primary

METRIC = "worst_asr"


def worst_case_per_seed(per_seed: pd.DataFrame, preset: str, defense: str, took: list[str]) -> pd.DataFrame:
    """Per seed on which the defense succeeded on every attack that took: its largest ASR (``worst_asr``) and the
    cell that gave it (``cell_id``), indexed by seed."""
    rows = per_seed[(per_seed["preset"] == preset) & (per_seed["defense"] == defense) & per_seed["attack"].isin(took)]
    complete = [seed for seed, part in rows.groupby("seed") if set(part["attack"]) >= set(took)]
    worst = []
    for seed in sorted(complete):
        part = rows[rows["seed"] == seed].sort_values(["asr", "attack"], ascending=[False, True])
        worst.append({"seed": seed, METRIC: float(part["asr"].iloc[0]), "cell_id": part["cell_id"].iloc[0]})
    return pd.DataFrame(worst, columns=["seed", METRIC, "cell_id"]).set_index("seed")


def rank_pairs(ranking: pd.DataFrame, per_seed: pd.DataFrame, took: dict[str, list[str]],
               predictions: dict[str, Predictions]) -> pd.DataFrame:
    """The paired worst-case comparisons between every two ranked defenses of a preset (``pairwise.csv`` rows
    with metric ``worst_asr``): over seeds where two or more are shared, else per image within the one seed."""
    rows = []
    for preset, group in ranking.dropna(subset=["rank"]).groupby("preset", sort=True):
        worst = {name: worst_case_per_seed(per_seed, preset, name, took[preset]) for name in sorted(group["defense"])}
        for name_a, name_b in itertools.combinations(sorted(worst), 2):
            a, b = worst[name_a], worst[name_b]
            seeds = sorted(set(a.index) & set(b.index))
            base = {"preset": preset, "attack": "", "metric": METRIC, "defense_a": name_a, "defense_b": name_b}
            rows += compare_paired(base, a, b, seeds, METRIC, predictions)
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def rank_group_labels(ranking: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """``lo–hi`` (or ``k``) for each ranked defense of ``ranking``; empty for the unranked."""
    verdicts = primary(pairs[pairs["metric"] == METRIC]) if len(pairs) else pairs
    labels = pd.Series("", index=ranking.index, dtype=object)
    for preset, group in ranking.dropna(subset=["rank"]).groupby("preset"):
        names = set(group["defense"])
        in_preset = verdicts[verdicts["preset"] == preset] if len(verdicts) else verdicts
        better = {name: 0 for name in names}
        worse = {name: 0 for name in names}
        for pair in in_preset.itertuples():
            if pair.verdict == "a better":
                better[pair.defense_b] += 1
                worse[pair.defense_a] += 1
            elif pair.verdict == "b better":
                better[pair.defense_a] += 1
                worse[pair.defense_b] += 1
        for index, name in zip(group.index, group["defense"]):
            low, high = 1 + better[name], len(names) - worse[name]
            labels[index] = str(low) if low == high else f"{low}–{high}"
    return labels


def inseparable(pairs: pd.DataFrame) -> pd.DataFrame:
    """The ranked pairs the data cannot separate, with the seeds their observed spread says would (estimate)."""
    if pairs.empty:
        return pairs
    verdicts = primary(pairs[pairs["metric"] == METRIC])
    return verdicts[verdicts["verdict"] == "not separable"].reset_index(drop=True)


def seeds_text(value: float) -> str:
    """How ``seeds_needed`` reads on the page and in the terminal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "> 10000" if np.isinf(value) else str(int(value))
