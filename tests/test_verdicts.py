"""Verdicts that cannot be gamed, on hand-made results and prediction files with known answers: the utility rule
(a defense that wrecks the model is listed, never ranked), the Pareto front, paired t and exact McNemar tests
against scipy's own, rank groups, and result folders from before predictions existed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.predictions import FILENAME, Predictions
from leaderboard.aggregate import build
from leaderboard.build import write_leaderboard
from leaderboard.compare import mcnemar, paired_t, seeds_needed
from leaderboard.load import load_results
from tests.results_rows import make_row, write_results

SEEDS = (0, 1, 2)


def _rows(table: dict[tuple[str, str], list[tuple[float, float | None]]], **extra) -> list[dict]:
    """Rows from {(attack, defense): [(ca, asr) per seed]}."""
    return [make_row(attack, defense, seed, ca, asr, **extra)
            for (attack, defense), values in table.items() for seed, (ca, asr) in zip(SEEDS, values)]


def _board(tmp_path, rows: list[dict], **options):
    return build(load_results([write_results(tmp_path / "results.csv", rows)]), **options)


WRECKED = {
    ("none", "none"): [(0.82, None), (0.80, None), (0.81, None)],
    ("none", "cleanclip"): [(0.81, None), (0.79, None), (0.80, None)],
    ("none", "ssl-only"): [(0.40, None), (0.38, None), (0.41, None)],
    ("none", "wreck"): [(0.10, None), (0.10, None), (0.10, None)],
    ("badnet", "none"): [(0.81, 1.00), (0.80, 0.99), (0.80, 1.00)],
    ("badnet", "cleanclip"): [(0.80, 0.10), (0.79, 0.50), (0.79, 0.05)],
    ("badnet", "ssl-only"): [(0.42, 0.20), (0.40, 0.30), (0.43, 0.10)],
    ("badnet", "wreck"): [(0.10, 0.00), (0.10, 0.00), (0.10, 0.00)],
}


def test_a_defense_that_wrecks_the_model_is_listed_never_ranked_and_says_why(tmp_path):
    board = _board(tmp_path, _rows(WRECKED, n_classes=10))
    ranking = board.ranking.set_index("defense")
    assert pd.isna(ranking.loc["wreck", "rank"]) and not ranking.loc["wreck", "ranked"]
    assert ranking.loc["wreck", "note"] == "not ranked: CA cost 0.710 > 0.05 (on the benign control)"
    assert pd.isna(ranking.loc["ssl-only", "rank"]) and "CA cost 0.413 > 0.05" in ranking.loc["ssl-only", "note"]
    assert ranking.loc[["cleanclip", "none"], "rank"].tolist() == [1, 2]  # ASR 0.217 < 0.997, at 1 point of CA
    cells = board.cells.set_index(["attack", "defense"])
    assert cells.loc[("badnet", "wreck"), "near_chance"] and not cells.loc[("badnet", "wreck"), "ranked"]
    assert "ASR meaningless: CA 0.100 is near chance (0.100)" in cells.loc[("badnet", "wreck"), "note"]
    assert not cells.loc[("badnet", "ssl-only"), "near_chance"]
    assert pd.isna(cells.loc[("badnet", "wreck"), "rank"]) and cells.loc[("badnet", "cleanclip"), "rank"] == 1
    # DER still rewards the wreck (reported, never ranked by): (0.997 − 0.703 + 1) / 2, above "no change" (0.5).
    assert cells.loc[("badnet", "wreck"), "der_mean"] == pytest.approx(0.6467, abs=1e-4)


def test_the_budget_is_an_option_and_a_bad_one_is_refused(tmp_path):
    board = _board(tmp_path, _rows(WRECKED, n_classes=10), max_ca_cost=0.5)
    ranking = board.ranking.set_index("defense")
    assert ranking.loc["ssl-only", "ranked"] and ranking.loc["ssl-only", "rank"] == 1  # worst ASR 0.200 < 0.217
    assert not ranking.loc["wreck", "ranked"]  # over 0.5, and near chance anyway
    from benchmark.errors import UserError

    with pytest.raises(UserError, match="--max-ca-cost 2"):
        _board(tmp_path, _rows(WRECKED), max_ca_cost=2)


def test_a_victim_at_chance_means_its_attack_is_not_checked(tmp_path):
    table = {("none", "none"): [(0.8, None)] * 3, ("badnet", "none"): [(0.11, 1.0)] * 3,
             ("badnet", "cleanclip"): [(0.11, 0.0)] * 3}
    cells = _board(tmp_path, _rows(table, n_classes=10)).cells.set_index(["attack", "defense"])
    assert not cells.loc[("badnet", "cleanclip"), "took"]
    assert "no-defense victim is near chance" in cells.loc[("badnet", "cleanclip"), "note"]


def test_pareto_front_marks_the_defenses_no_other_beats_on_both(tmp_path):
    table = {("none", "none"): [(0.82, None)] * 3,
             ("badnet", "none"): [(0.82, 1.0)] * 3, ("badnet", "a"): [(0.80, 0.1)] * 3,
             ("badnet", "b"): [(0.82, 0.2)] * 3, ("badnet", "c"): [(0.79, 0.3)] * 3,
             ("badnet", "wreck"): [(0.10, 0.0)] * 3}
    ranking = _board(tmp_path, _rows(table, n_classes=10)).ranking.set_index("defense")
    assert ranking["pareto"].to_dict() == {"a": True, "b": True, "c": False, "none": False, "wreck": True}
    assert ranking.loc["c", "beaten_by"] == "a, b" and ranking.loc["a", "beaten_by"] == ""
    assert ranking.loc["none", "beaten_by"] == "b"  # as accurate, and a lower ASR
    assert not ranking.loc["wreck", "ranked"]  # on the front, but the front is a view, not the ranking


def test_paired_interval_equals_scipy_ttest_rel_and_the_closed_form():
    a, b = np.array([0.051, 0.534, 0.016]), np.array([0.791, 0.957, 0.422])
    result = paired_t(a, b)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high, result.p_value) == pytest.approx(
        (interval.low, interval.high, reference.pvalue), abs=1e-12)
    d = a - b
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (result.diff, result.ci_low, result.ci_high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))


def test_mcnemar_p_value_and_interval_equal_the_exact_binomial_test():
    rng = np.random.default_rng(0)
    for n, flip in ((200, 0.1), (1000, 0.02), (50, 0.3)):
        a = rng.random(n) < 0.6
        b = np.where(rng.random(n) < flip, ~a, a) & (rng.random(n) < 0.95)
        result = mcnemar(a, b)
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        assert (result.a_only, result.b_only) == (a_only, b_only) and result.diff == pytest.approx(a.mean() - b.mean())
        reference = stats.binomtest(a_only, a_only + b_only, 0.5)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
        share = reference.proportion_ci(0.95, method="exact")
        scale = (a_only + b_only) / n
        assert (result.ci_low, result.ci_high) == pytest.approx((scale * (2 * share.low - 1), scale * (2 * share.high - 1)))
    same = np.ones(10, dtype=bool)
    assert mcnemar(same, same).p_value == 1.0


def test_seeds_needed_is_the_first_count_whose_interval_excludes_zero():
    d = np.array([-0.02, 0.02, -0.02])
    needed = int(seeds_needed(d))
    mean, spread = abs(d.mean()), d.std(ddof=1)
    width = lambda n: stats.t.ppf(0.975, n - 1) * spread / math.sqrt(n)  # noqa: E731
    assert width(needed) < mean <= width(needed - 1)
    assert math.isnan(seeds_needed(np.array([0.1, -0.1])))  # no observed difference: no count separates it
    assert math.isnan(seeds_needed(np.array([0.1])))  # one seed: no spread to extrapolate from


RANK_GROUPS = {
    ("none", "none"): [(0.80, None)] * 3,
    ("badnet", "none"): [(0.80, 1.00), (0.80, 0.98), (0.80, 0.99)],
    ("badnet", "a"): [(0.80, 0.10), (0.80, 0.12), (0.80, 0.11)],
    ("badnet", "b"): [(0.80, 0.12), (0.80, 0.10), (0.80, 0.13)],
    ("badnet", "c"): [(0.80, 0.50), (0.80, 0.52), (0.80, 0.51)],
}


def test_rank_groups_join_the_defenses_the_data_cannot_separate(tmp_path):
    board = _board(tmp_path, _rows(RANK_GROUPS, n_classes=10))
    ranking = board.ranking.set_index("defense")
    assert ranking["rank"].to_dict() == {"a": 1, "b": 2, "c": 3, "none": 4}
    assert ranking["rank_group"].to_dict() == {"a": "1–2", "b": "1–2", "c": "3", "none": "4"}
    cells = board.cells.set_index(["attack", "defense"])
    assert cells.loc[("badnet", "b"), "rank_group"] == "1–2" and cells.loc[("none", "none"), "rank_group"] == ""
    worst = board.pairwise[(board.pairwise["metric"] == "worst_asr") & (board.pairwise["test"] == "paired_t")]
    pair = worst.set_index(["defense_a", "defense_b"]).loc[("a", "b")]
    assert pair["verdict"] == "not separable" and pair["seeds_needed"] == seeds_needed(np.array([-0.02, 0.02, -0.02]))
    assert worst.set_index(["defense_a", "defense_b"]).loc[("a", "c"), "verdict"] == "a better"


def test_old_folders_without_predictions_or_classes_still_aggregate_over_seeds(tmp_path):
    from benchmark.results import COLUMNS

    old_columns = [column for column in COLUMNS if column != "n_classes"]
    rows = [dict(row, schema_version=2) for row in _rows(RANK_GROUPS)]
    board = build(load_results([write_results(tmp_path / "results.csv", rows, old_columns)]))
    assert set(board.pairwise["test"]) == {"paired_t"}  # no per-image files: over seeds only
    assert board.cells["near_chance"].isna().all()  # chance unknown without n_classes: nothing flagged
    assert board.ranking.set_index("defense")["rank_group"]["a"] == "1–2"


def _predictions(correct: np.ndarray, fooled: np.ndarray) -> Predictions:
    """10 classes, target 0; labels 1 for the triggered images; predictions right where ``correct``, the target
    where ``fooled``."""
    n = len(correct)
    labels = np.ones(n, dtype=np.int64)
    return Predictions(10, 0, labels, np.where(correct, 1, 2), np.arange(n), np.where(fooled, 0, 3))


def test_one_seed_with_predictions_is_compared_image_by_image(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    outcomes = {"none": (rng.random(n) < 0.8, rng.random(n) < 0.97), "a": (rng.random(n) < 0.8, rng.random(n) < 0.10),
                "b": (rng.random(n) < 0.8, rng.random(n) < 0.12)}
    rows = []
    for index, (defense, (correct, fooled)) in enumerate(outcomes.items()):
        cell_id = f"{index:016x}"
        _predictions(correct, fooled).save(tmp_path / "run" / "cache" / "cells" / cell_id / FILENAME)
        rows.append(make_row("badnet", defense, 0, float(correct.mean()), float(fooled.mean()), cell_id=cell_id,
                             n_clean=n, n_triggered=n, n_classes=10))
    write_leaderboard([write_results(tmp_path / "run" / "results.csv", rows)], quiet=True)
    pairs = pd.read_csv(tmp_path / "run" / "pairwise.csv")
    asr = pairs[(pairs["metric"] == "asr") & (pairs["defense_a"] == "a") & (pairs["defense_b"] == "b")].iloc[0]
    a_fooled, b_fooled = outcomes["a"][1], outcomes["b"][1]
    a_only, b_only = int((a_fooled & ~b_fooled).sum()), int((~a_fooled & b_fooled).sum())
    assert asr["test"] == "mcnemar" and (asr["a_only"], asr["b_only"]) == (a_only, b_only)
    assert asr["p_value"] == pytest.approx(stats.binomtest(a_only, a_only + b_only).pvalue, rel=1e-5)
    worst = pairs[pairs["metric"] == "worst_asr"].set_index(["defense_a", "defense_b"])
    assert worst.loc[("a", "none"), "test"] == "mcnemar" and worst.loc[("a", "none"), "verdict"] == "a better"
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv").set_index(["attack", "defense"])
    assert board.loc[("badnet", "none"), "rank_group"] == "3"


def test_a_predictions_file_that_does_not_match_its_row_is_ignored_with_a_warning(tmp_path):
    cell_id = "00000000000000aa"
    _predictions(np.ones(5, bool), np.zeros(5, bool)).save(tmp_path / "cache" / "cells" / cell_id / FILENAME)
    rows = [make_row("badnet", "none", 0, 0.8, 1.0, cell_id=cell_id), make_row("badnet", "x", 0, 0.8, 0.0)]
    from leaderboard.load import load_cell_predictions

    with pytest.warns(UserWarning, match="does not match its row"):
        assert load_cell_predictions(load_results([write_results(tmp_path / "results.csv", rows)])) == {}


def test_a_near_chance_cell_keeps_its_flag_beside_a_note_on_failed_seeds(tmp_path):
    rows = _rows(WRECKED, n_classes=10)
    rows[-1] = make_row("badnet", "wreck", 2, None, status="failed", reason="defense: RuntimeError: boom")
    note = _board(tmp_path, rows).cells.set_index(["attack", "defense"]).loc[("badnet", "wreck"), "note"]
    assert note.startswith("ASR meaningless: CA 0.100 is near chance (0.100); 1 of 3 seeds failed")
