"""The detection table: how well each defense of a stage that scores pairs (the data stage) found the poisoned
pairs, over seeds.

``detection.csv`` has one row per (preset, attack, defense) of a data-stage defense on an attacked victim (the
benign control has nothing to detect; its cost shows as CA on the main table):

======================  ===================================================================================
preset, attack,         the cell, as in ``leaderboard.csv``
defense
n_seeds, seeds          the successful seeds averaged
removal_rate            the share of training pairs the runner removed (the preset's ``[detection]``)
M_mean, M_ci_low,       for M in auroc, auprc, tpr_at_1fpr, tpr_at_5fpr, removed_precision, removed_recall
M_ci_high               (:mod:`benchmark.detection_metrics`): mean over seeds and the 95% Student-t interval of
                        the mean, clipped to [0, 1]; empty with one seed
======================  ===================================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.results import BENIGN_ATTACK
from benchmark.stages import stages_adding
from leaderboard.aggregate import mean_interval

DETECTION_METRICS = ["auroc", "auprc", "tpr_at_1fpr", "tpr_at_5fpr", "removed_precision", "removed_recall"]
DETECTION_TABLE_COLUMNS = (["preset", "attack", "defense", "n_seeds", "seeds", "removal_rate"]
                           + [f"{metric}_{stat}" for metric in DETECTION_METRICS
                              for stat in ("mean", "ci_low", "ci_high")])


def detection_table(results: pd.DataFrame) -> pd.DataFrame:
    """The detection table of validated result rows (see :func:`leaderboard.load.load_results`)."""
    detecting = results["stage"].isin(stages_adding("auroc"))  # the stages whose rows carry detection metrics
    rows = results[(results["status"] == "ok") & detecting & (results["attack"] != BENIGN_ATTACK)]
    table = []
    for (preset, attack, defense), group in rows.groupby(["preset", "attack", "defense"], sort=True):
        row = {"preset": preset, "attack": attack, "defense": defense, "n_seeds": len(group),
               "seeds": ";".join(str(seed) for seed in sorted(group["seed"])),
               "removal_rate": float(group["removal_rate"].iloc[0])}
        for metric in DETECTION_METRICS:
            mean, _, low, high = mean_interval(group[metric])
            row.update({f"{metric}_mean": mean, f"{metric}_ci_low": np.clip(low, 0.0, 1.0),
                        f"{metric}_ci_high": np.clip(high, 0.0, 1.0)})
        table.append(row)
    return pd.DataFrame(table, columns=DETECTION_TABLE_COLUMNS)
