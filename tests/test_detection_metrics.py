"""Detection metrics of data-stage defenses: known answers, an independent computation, and the leaderboard's
detection table with intervals over seeds."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.detection_metrics import (average_precision, detection_metrics, removed_indices, removal_order,
                                         tpr_at_fpr)
from benchmark.errors import UserError
from leaderboard.build import write_leaderboard
from leaderboard.detection import detection_table
from leaderboard.load import load_results
from tests.results_rows import make_row, write_results


def _by_pairs(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the share of (poisoned, clean) pairs ordered correctly, ties half: the definition, by counting."""
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(scores[positive], scores[~positive])]
    return float(np.mean(wins))


def test_separable_scores_give_perfect_metrics():
    scores = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.8, 0.0])
    metrics = detection_metrics(scores, [2, 4], removed_indices(scores, 2 / 6))
    assert (metrics.auroc, metrics.auprc, metrics.tpr_at_1fpr, metrics.tpr_at_5fpr) == (1.0, 1.0, 1.0, 1.0)
    assert (metrics.removed_precision, metrics.removed_recall, metrics.n_removed) == (1.0, 1.0, 2)


def test_reversed_scores_give_zero_auroc_and_a_hand_computed_average_precision():
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])  # the poisoned pair (index 3) scores lowest
    metrics = detection_metrics(scores, [3], removed_indices(scores, 0.25))
    assert metrics.auroc == 0.0
    assert metrics.auprc == pytest.approx(1 / 4)  # found last: precision 1/4 at the only recall step
    assert metrics.tpr_at_5fpr == 0.0 and metrics.removed_precision == 0.0 and metrics.removed_recall == 0.0


def test_auroc_equals_pair_counting_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, size=40).astype(float)  # many ties
        positive = rng.random(40) < 0.3
        positive[:2] = [True, False]
        metrics = detection_metrics(torch.tensor(scores), np.nonzero(positive)[0].tolist(), torch.tensor([0]))
        assert metrics.auroc == pytest.approx(_by_pairs(scores, positive), abs=1e-12)


def test_average_precision_steps_over_distinct_thresholds():
    # thresholds 0.9 (1 poisoned of 1), 0.5 (tie: 1 poisoned + 1 clean; cumulative 2 of 3), 0.1 (1 clean: 2 of 4)
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    assert average_precision(scores, positive) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


def test_tpr_at_fpr_takes_the_best_threshold_within_the_budget():
    # 100 clean pairs and 10 poisoned; one clean pair outscores all poisoned, the rest score below them
    scores = np.r_[10.0, np.zeros(99), np.linspace(1, 2, 10)]
    positive = np.r_[np.zeros(100, bool), np.ones(10, bool)]
    assert tpr_at_fpr(scores, positive, 0.01) == 1.0  # flagging ≥ 1 flags 1 clean pair of 100: FPR 1%
    assert tpr_at_fpr(scores, positive, 0.005) == 0.0  # no threshold flags a poisoned pair without that clean one


def test_removal_takes_the_top_scores_and_breaks_ties_by_index():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert removal_order(scores).tolist() == [1, 2, 4, 3, 0]
    assert removed_indices(scores, 0.4).tolist() == [1, 2]
    assert removed_indices(scores, 0.0).tolist() == []


def test_the_benign_control_has_no_ranking_metrics_and_zero_precision():
    scores = torch.arange(10.0)
    metrics = detection_metrics(scores, [], removed_indices(scores, 0.2))
    assert metrics.auroc is None and metrics.removed_recall is None
    assert metrics.removed_precision == 0.0 and metrics.n_removed == 2


def _detector_rows() -> list[dict]:
    rows = []
    for seed, (auroc, recall) in enumerate([(0.9, 0.5), (0.95, 0.7), (1.0, 0.9)]):
        rows += [make_row("badnet", "none", seed, 0.80, 0.95),
                 make_row("badnet", "detect-x", seed, 0.79, 0.10, stage="data", removal_rate=0.1, auroc=auroc,
                          auprc=auroc - 0.1, tpr_at_1fpr=0.3, tpr_at_5fpr=0.6, removed_precision=0.25,
                          removed_recall=recall, n_removed=51),
                 make_row("none", "none", seed, 0.82),
                 make_row("none", "detect-x", seed, 0.81, stage="data", removal_rate=0.1, removed_precision=0.0,
                          n_removed=51)]
    return rows


def test_the_detection_table_averages_over_seeds_with_intervals(tmp_path):
    results = load_results([write_results(tmp_path / "results.csv", _detector_rows())])
    table = detection_table(results).set_index(["attack", "defense"])
    assert list(table.index) == [("badnet", "detect-x")]  # the benign control has nothing to detect
    row = table.loc[("badnet", "detect-x")]
    assert row.n_seeds == 3 and row.removal_rate == 0.1 and row.auroc_mean == pytest.approx(0.95)
    half = 4.302652729911275 * 0.05 / np.sqrt(3)  # t(0.975, 2) × sample std / √n
    assert row.auroc_ci_low == pytest.approx(0.95 - half) and row.auroc_ci_high == 1.0  # clipped to [0, 1]
    assert row.removed_recall_mean == pytest.approx(0.7)


def test_the_leaderboard_shows_the_stage_and_the_detection_table(tmp_path):
    write_results(tmp_path / "results.csv", _detector_rows())
    index = write_leaderboard([tmp_path / "results.csv"], quiet=True)
    html = index.read_text()
    assert 'id="detection-table"' in html and "TPR @ 1% FPR" in html
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board.loc[board.defense == "detect-x", "stage"]) == {"data"}
    detection = pd.read_csv(tmp_path / "detection.csv")
    assert detection.auroc_mean.tolist() == pytest.approx([0.95])


def test_the_study_table_prints_the_detection_table_with_its_intervals(tmp_path):
    write_results(tmp_path / "results.csv", _detector_rows())
    write_leaderboard([tmp_path / "results.csv"], quiet=True)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "study_table.py"
    printed = subprocess.run([sys.executable, str(script), str(tmp_path), "--detection"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
    row = pd.read_csv(tmp_path / "detection.csv").iloc[0]
    assert len(printed) == 3 and printed[2].startswith("| badnet | detect-x | 3 | 0.950 [")
    assert f"0.950 [{row.auroc_ci_low:.3f}, 1]" in printed[2] and "| 0.700 [" in printed[2]


def test_a_row_with_an_unknown_stage_is_refused_with_its_place(tmp_path):
    path = write_results(tmp_path / "results.csv", [make_row("badnet", "none", 0, 0.8, 0.9, stage="during")])
    with pytest.raises(UserError, match=r"row 1 \(line 2\), column 'stage': expected one of post-training, "
                                        r"training, data, got 'during'"):
        load_results([path])
