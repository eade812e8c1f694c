"""Paired comparisons between defenses applied to the same victims: which differences the data can tell apart.

Two defenses of one (preset, attack) are applied to the same victims (one per seed) and evaluated on the same
test images with the same trigger draws, so they are compared *paired*, never as two independent means:

- over seeds, a paired t-test on the per-seed differences (``scipy.stats.ttest_rel``) with its 95% interval;
- within one seed, an exact McNemar test on the discordant test images (images one defense gets right, or one
  trigger fools, and the other does not), from the cells' per-image predictions
  (:mod:`benchmark.predictions`). The interval of the difference is the Clopper-Pearson interval of the share
  of discordant images that favour the first defense, scaled to all images; it excludes zero exactly when the
  exact test rejects at 5%.

``pairwise.csv`` (one row per preset, attack, metric, pair of defenses and test):

=================  ===============================================================================================
preset, attack     the victims compared on; attack ``none`` is the benign control (CA only); empty for the
                   ``worst_asr`` rows, which compare ranked defenses on what the ranking orders them by
metric             ``ca`` (higher is better), ``asr`` (lower is better) or ``worst_asr``: each seed's largest ASR
                   over the attacks that took (lower is better; :mod:`leaderboard.rank_groups`)
defense_a,         the pair, in name order; differences are a − b
defense_b
test               ``paired_t`` (over the seeds both defenses succeeded on), ``mcnemar`` (one seed, per image) or
                   ``untested`` (one common seed and no predictions: the pair cannot be separated)
seeds              the seeds used (``0;1;2``); for ``mcnemar`` the one seed
n                  seeds (``paired_t``) or test images (``mcnemar``) compared
diff               mean of a − b (``paired_t``) or share(a) − share(b) over the images (``mcnemar``)
ci_low, ci_high    its 95% interval
p_value            two-sided p-value of no difference
a_only, b_only     ``mcnemar``: images where only a (only b) is right (CA) or fooled (ASR); empty for ``paired_t``
verdict            ``a better``, ``b better`` or ``not separable`` (at 95%)
seeds_needed       ``paired_t``, not separable: the seeds after which the observed mean and spread of the
                   differences would separate the pair (an estimate, not a run); empty when the observed mean
                   difference is zero or a spread cannot be estimated
=================  ===============================================================================================

No correction for multiple comparisons is applied: each verdict is one test at 95%, and the page says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.predictions import Predictions
from leaderboard.load import BENIGN_ATTACK

CONFIDENCE = 0.95
MAX_SEEDS_NEEDED = 10_000  # beyond this the observed difference is, for any practical purpose, not separable
PAIRWISE_COLUMNS = ["preset", "attack", "metric", "defense_a", "defense_b", "test", "seeds", "n", "diff", "ci_low",
                    "ci_high", "p_value", "a_only", "b_only", "verdict", "seeds_needed"]
PAIR_KEYS = ["preset", "attack", "metric", "defense_a", "defense_b"]  # one compared pair
BETTER_IS_LOWER = {"ca": False, "asr": True, "worst_asr": True}


@dataclass(frozen=True)
class Paired:
    """One paired comparison of a − b: the difference, its 95% interval, the p-value and what the test used."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    a_only: int | None = None
    b_only: int | None = None


def paired_t(a: np.ndarray, b: np.ndarray) -> Paired:
    """Paired t-test of a − b over seeds, with the 95% interval of the mean difference (``ttest_rel``). Differences
    that are all equal have no spread: the interval is that difference and p is 1 if it is zero, else 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        raise ValueError("a paired t-test needs two or more seeds")
    differences = a - b
    if np.ptp(differences) == 0:
        diff = float(differences[0])
        return Paired(diff, diff, diff, 1.0 if diff == 0 else 0.0, len(a))
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(CONFIDENCE)
    return Paired(float(differences.mean()), float(interval.low), float(interval.high), float(result.pvalue), len(a))


def mcnemar(a: np.ndarray, b: np.ndarray) -> Paired:
    """Exact McNemar test on paired booleans (one entry per test image: right, or fooled, under a and under b).

    p = 2 · P(X ≤ min(a_only, b_only)) for X ~ Binomial(a_only + b_only, 1/2), capped at 1. The interval of
    share(a) − share(b) = (a_only − b_only) / n is the Clopper-Pearson interval of a_only / (a_only + b_only),
    mapped through d = (a_only + b_only) / n · (2π − 1).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("McNemar needs two equally long, non-empty boolean vectors over the same images")
    n = len(a)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    diff = (a_only - b_only) / n
    if discordant == 0:
        return Paired(0.0, 0.0, 0.0, 1.0, n, 0, 0)
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(a_only, b_only), discordant, 0.5)))
    alpha = 1.0 - CONFIDENCE
    low = 0.0 if a_only == 0 else float(stats.beta.ppf(alpha / 2, a_only, b_only + 1))
    high = 1.0 if b_only == 0 else float(stats.beta.ppf(1 - alpha / 2, a_only + 1, b_only))
    scale = discordant / n
    return Paired(diff, scale * (2 * low - 1), scale * (2 * high - 1), p_value, n, a_only, b_only)


def verdict(result: Paired, lower_is_better: bool) -> str:
    """``a better``, ``b better`` or ``not separable``: separable when the 95% interval excludes zero."""
    if result.ci_low > 0:
        return "b better" if lower_is_better else "a better"
    if result.ci_high < 0:
        return "a better" if lower_is_better else "b better"
    return "not separable"


def seeds_needed(differences: np.ndarray) -> float:
    """The smallest number of seeds n at which the observed mean |d̄| and spread s of the paired differences
    would give a 95% interval excluding zero: t(0.975, n − 1) · s / √n < |d̄|. NaN when d̄ = 0 or s cannot be
    estimated (fewer than two seeds), infinite beyond ``MAX_SEEDS_NEEDED``."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2:
        return math.nan
    mean, spread = abs(float(differences.mean())), float(differences.std(ddof=1))
    if mean == 0:
        return math.nan
    if spread == 0:
        return 2.0
    for n in range(2, MAX_SEEDS_NEEDED + 1):
        if float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * spread / math.sqrt(n) < mean:
            return float(n)
    return math.inf


def outcome(predictions: Predictions, metric: str) -> np.ndarray:
    """Per-image booleans behind a metric: correct on clean images (CA), fooled when triggered (ASR)."""
    return predictions.clean_correct if metric == "ca" else predictions.triggered_success


def comparable(first: Predictions, second: Predictions, metric: str) -> bool:
    """Whether two cells' predictions cover the same images (same test set, same triggered images)."""
    if not np.array_equal(first.clean_label, second.clean_label):
        return False
    return metric == "ca" or (first.target == second.target
                              and np.array_equal(first.triggered_index, second.triggered_index))


def pairwise(per_seed: pd.DataFrame, predictions: dict[str, Predictions]) -> pd.DataFrame:
    """Every paired comparison (see the module docstring) between defenses of the same (preset, attack).

    ``per_seed`` holds the successful rows (one per preset, attack, defense, seed, with ``cell_id``, ``ca`` and
    ``asr``); ``predictions`` maps cell ids to their per-image predictions, where they exist.
    """
    rows = []
    for (preset, attack), group in per_seed.groupby(["preset", "attack"], sort=True):
        by_defense = {name: part.set_index("seed") for name, part in group.groupby("defense", sort=True)}
        metrics = ("ca",) if attack == BENIGN_ATTACK else ("ca", "asr")
        for (name_a, a), (name_b, b) in itertools.combinations(sorted(by_defense.items()), 2):
            seeds = sorted(set(a.index) & set(b.index))
            for metric in metrics:
                base = {"preset": preset, "attack": attack, "metric": metric, "defense_a": name_a,
                        "defense_b": name_b}
                rows += compare_paired(base, a, b, seeds, metric, predictions)
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def compare_paired(base: dict, a: pd.DataFrame, b: pd.DataFrame, seeds: list, metric: str,
             predictions: dict[str, Predictions]) -> list[dict]:
    lower = BETTER_IS_LOWER[metric]
    rows = []
    if len(seeds) >= 2:
        values_a, values_b = a.loc[seeds, metric].to_numpy(float), b.loc[seeds, metric].to_numpy(float)
        result = paired_t(values_a, values_b)
        call = verdict(result, lower)
        needed = seeds_needed(values_a - values_b) if call == "not separable" else math.nan
        rows.append(pair_row(base, "paired_t", seeds, result, call, needed))
    for seed in seeds:
        first, second = predictions.get(a.loc[seed, "cell_id"]), predictions.get(b.loc[seed, "cell_id"])
        if first is None or second is None or not comparable(first, second, metric):
            continue
        result = mcnemar(outcome(first, metric), outcome(second, metric))
        rows.append(pair_row(base, "mcnemar", [seed], result, verdict(result, lower), math.nan))
    if not rows and seeds:  # one seed and no predictions: nothing can separate the pair
        diff = float(a.loc[seeds[0], metric] - b.loc[seeds[0], metric])
        rows.append(pair_row(base, "untested", seeds, Paired(diff, math.nan, math.nan, math.nan, 1), "not separable",
                             math.nan))
    return rows


def pair_row(base: dict, test: str, seeds: list, result: Paired, call: str, needed: float) -> dict:
    return {**base, "test": test, "seeds": ";".join(str(seed) for seed in seeds), "n": result.n,
            "diff": result.diff, "ci_low": result.ci_low, "ci_high": result.ci_high, "p_value": result.p_value,
            "a_only": result.a_only, "b_only": result.b_only, "verdict": call, "seeds_needed": needed}


def primary(pairs: pd.DataFrame) -> pd.DataFrame:
    """One verdict per pair: the paired t over seeds where there is one, else the single seed's McNemar."""
    order = pairs.assign(_order=(pairs["test"] != "paired_t").astype(int))
    return order.sort_values(PAIR_KEYS + ["_order"]).drop_duplicates(PAIR_KEYS).drop(columns="_order")


def verdicts(pairs: pd.DataFrame) -> pd.DataFrame:
    """:func:`primary`'s row per pair with the per-image evidence beside it: in how many of the single seeds
    tested (``mcnemar_seeds``, 0 without predictions) McNemar separates the pair (``mcnemar_separated``)."""
    per_image = (pairs[pairs["test"] == "mcnemar"].assign(separated=lambda f: f["verdict"] != "not separable")
                 .groupby(PAIR_KEYS, as_index=False)
                 .agg(mcnemar_seeds=("separated", "size"), mcnemar_separated=("separated", "sum")))
    merged = primary(pairs).merge(per_image, on=PAIR_KEYS, how="left")
    counts = ["mcnemar_seeds", "mcnemar_separated"]
    merged[counts] = merged[counts].fillna(0).astype(int)
    return merged.sort_values(PAIR_KEYS).reset_index(drop=True)
