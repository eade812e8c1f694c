"""The leaderboard on hand-made results files with answers worked out by hand: aggregates, DER, the validity
gate, ranking, schema errors (one line, exit code 2) and escaping of untrusted names."""

from __future__ import annotations

import csv
import io
import math

import pandas as pd
import pytest

from benchmark.errors import UserError
from benchmark.results import COLUMNS, GALLERY_FILE, SCHEMA_VERSION, UPGRADABLE
from leaderboard.aggregate import build, der
from leaderboard.build import write_leaderboard
from leaderboard.load import load_results
from tests.results_rows import EVIL, known_rows, make_row, write_results


@pytest.fixture
def board(tmp_path):
    return build(load_results([write_results(tmp_path / "results.csv", known_rows())]))


def cell(board, attack: str, defense: str) -> pd.Series:
    cells = board.cells
    return cells[(cells.attack == attack) & (cells.defense == defense)].iloc[0]


def test_der_follows_the_paper_not_the_published_code():
    # ΔASR 0.8, ΔCA 0.05: the paper gives (0.8 − 0.05 + 1) / 2; BackdoorBench's code would give 0.925.
    assert der(0.8, 0.05) == pytest.approx(0.875)
    assert der(-0.2, -0.1) == pytest.approx(0.5)  # a rise in ASR or in CA counts as zero
    assert der(1.0, 0.0) == pytest.approx(1.0)
    assert math.isnan(der(float("nan"), 0.0))


def test_seed_aggregates_and_t_interval(board):
    row = cell(board, "badnet", "cleanclip")
    assert row.n_seeds == 2 and row.seeds == "0;1" and row.ci_method == "t"
    assert row.ca_mean == pytest.approx(0.735)
    assert row.ca_std == pytest.approx(0.03 / math.sqrt(2))
    half = 12.706204736 * 0.015  # t(0.975, 1) · s / √2
    assert (row.ca_ci_low, row.ca_ci_high) == pytest.approx((0.735 - half, 0.735 + half))
    assert row.asr_mean == pytest.approx(0.25)
    assert row.asr_ci_low == 0.0  # 0.25 − 12.7·0.25 clipped to the metric's range


def test_deltas_and_der_are_paired_per_seed(board):
    row = cell(board, "badnet", "cleanclip")
    assert row.delta_ca_mean == pytest.approx((0.05 + -0.02) / 2)
    assert row.delta_asr_mean == pytest.approx((0.90 + 0.50) / 2)
    # seed 0: (0.9 − 0.05 + 1) / 2 = 0.925; seed 1: ΔCA −0.02 counts as 0, (0.5 + 1) / 2 = 0.75
    assert row.der_mean == pytest.approx((0.925 + 0.75) / 2)
    baseline = cell(board, "badnet", "none")
    assert (baseline.delta_ca_mean, baseline.delta_asr_mean, baseline.der_mean) == pytest.approx((0, 0, 0.5))


def test_benign_control_gives_the_ca_cost(board):
    row = cell(board, "none", "cleanclip")
    assert row.delta_ca_mean == pytest.approx((0.04 + 0.01) / 2)
    assert math.isnan(row.asr_mean) and math.isnan(row.der_mean) and pd.isna(row.took)
    ranking = board.ranking.set_index("defense")
    assert ranking.loc["cleanclip", "ca_cost"] == pytest.approx(0.025)


def test_failed_seeds_are_counted_not_averaged(board):
    partial = cell(board, "wanet", "finetune")
    assert partial.status == "ok" and partial.n_seeds == 1 and partial.n_failed == 1
    assert partial.ci_method == "wilson" and (partial.ca_ci_low, partial.ca_ci_high) == pytest.approx((0.75, 0.85))
    assert math.isnan(partial.delta_ca_ci_low)  # one seed says nothing about the spread of a difference
    assert "1 of 2 seeds failed" in partial.note and "ValueError" in partial.note
    broken = cell(board, "badnet", "broken")
    assert broken.status == "failed" and broken.n_seeds == 0 and math.isnan(broken.ca_mean)
    assert "out of memory" in broken.note


def test_attack_that_did_not_take_is_greyed_and_not_ranked(board):
    row = cell(board, "wanet", "cleanclip")
    assert not row.took and not row.ranked
    assert "did not take" in row.note and "0.250 < 0.5" in row.note
    assert cell(board, "badnet", "cleanclip").took


def test_ranking_worst_case_asr_over_attacks_that_took_ties_by_ca(board):
    ranking = board.ranking.set_index("defense")
    # cleanclip's wanet ASR (0.9) does not count: wanet did not take. cleanclip and tie share 0.25; CA decides.
    assert ranking.loc["cleanclip", "worst_asr"] == pytest.approx(0.25)
    assert ranking.loc[["cleanclip", "tie", "finetune", "none"], "rank"].tolist() == [1, 2, 3, 4]
    assert pd.isna(ranking.loc["broken", "rank"]) and "badnet" in ranking.loc["broken", "note"]
    assert cell(board, "badnet", "tie")["rank"] == 2
    assert pd.isna(cell(board, "wanet", "cleanclip")["rank"]) and pd.isna(cell(board, "none", "cleanclip")["rank"])


def test_lower_threshold_lets_the_attack_count(tmp_path):
    board = build(load_results([write_results(tmp_path / "results.csv", known_rows())]), threshold=0.2)
    ranking = board.ranking.set_index("defense")
    assert ranking.loc["cleanclip", "worst_asr"] == pytest.approx(0.9)
    assert pd.isna(ranking.loc["tie", "rank"])  # tie has no wanet cell


def test_leaderboard_csv_has_one_tidy_row_per_cell(tmp_path):
    results = write_results(tmp_path / "run" / "results.csv", known_rows())
    write_leaderboard([results], quiet=True)
    table = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert len(table) == 10 and not table.duplicated(["preset", "attack", "defense"]).any()
    assert {"ca_mean", "ca_ci_low", "der_mean", "took", "rank", "time_defense_s_mean"} <= set(table.columns)
    for name in ("pareto", "tradeoff", "asr_heatmap", "asr_seeds", "ca_cost"):
        assert (tmp_path / "run" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "run" / f"{name}.svg").stat().st_size > 0


def test_cli_writes_the_page_and_embeds_the_trigger_gallery(cli, tmp_path):
    results = write_results(tmp_path / "results.csv", known_rows())
    out = tmp_path / "site"
    out.mkdir()
    (out / GALLERY_FILE).write_bytes(_tiny_png())  # the page finds the gallery `cleanbench run` draws
    code, stdout, _ = cli("leaderboard", results, "--out", out)
    assert code == 0, stdout
    page = (out / "index.html").read_text()
    assert "leaderboard: " in stdout and "defense ranking" in stdout
    assert page.count("data:image/png;base64,") == 6  # five figures and the gallery
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched


def _tiny_png() -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, [[0.0, 1.0]], format="png")
    return buffer.getvalue()


def test_untrusted_names_render_as_text(tmp_path):
    """A name with markup is refused (names are identifiers: benchmark.names); markup in free text is escaped."""
    rows = known_rows() + [make_row("badnet", EVIL, 0, 0.7, 0.2), make_row("badnet", EVIL, 1, 0.7, 0.2)]
    with pytest.raises(UserError, match=r"column 'defense': '<script>alert\(1\)</script>' is not a name"):
        write_leaderboard([write_results(tmp_path / "named" / "results.csv", rows)], quiet=True)
    config = '{"x": "</pre><img src=x onerror=alert(2)>", "y": "<script>alert(1)</script>"}'
    rows = known_rows() + [make_row("badnet", "evil", 0, 0.7, 0.2, defense_config=config),
                           make_row("badnet", "evil", 1, 0.7, 0.2)]
    index = write_leaderboard([write_results(tmp_path / "results.csv", rows)], quiet=True)
    page = index.read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rows, cols: (rows, [c for c in cols if c != "ca"]), "missing column 'ca'"),
        (lambda rows, cols: (_set(rows, 2, ca="high"), cols), "row 3 (line 4), column 'ca': expected a number, got 'high'"),
        (lambda rows, cols: (_set(rows, 0, seed="1.5"), cols), "row 1 (line 2), column 'seed': expected an integer"),
        (lambda rows, cols: (_set(rows, 4, asr="1.7"), cols), "row 5 (line 6), column 'asr': 1.7 is outside [0, 1]"),
        (lambda rows, cols: (_set(rows, 1, status="done"), cols), "column 'status': expected one of ok, failed"),
        (lambda rows, cols: (_set(rows, 0, asr=""), cols), "row 1 (line 2), column 'asr': empty in an 'ok' row"),
        (lambda rows, cols: (_set(rows, 3, schema_version=SCHEMA_VERSION + 1), cols),
         "refusing to mix results schema versions"),
    ],
    ids=["missing-column", "not-a-number", "not-an-integer", "out-of-range", "bad-status", "empty-asr",
         "mixed-versions-in-a-file"],
)
def test_schema_errors_are_one_line_and_exit_2(cli, tmp_path, mutate, expected):
    rows, columns = mutate(known_rows(), list(COLUMNS))
    path = write_results(tmp_path / "results.csv", rows, columns)
    code, _, err = cli("leaderboard", path, "--out", tmp_path / "site")
    assert code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert str(path) in err and expected in err
    assert not (tmp_path / "site" / "index.html").exists()


def _set(rows: list[dict], index: int, **values: object) -> list[dict]:
    rows[index].update(values)
    return rows


def test_files_of_different_schema_versions_are_not_mixed(cli, tmp_path):
    newer = SCHEMA_VERSION + 1
    first = write_results(tmp_path / "a" / "results.csv", known_rows())
    second = write_results(tmp_path / "b" / "results.csv",
                           [dict(row, schema_version=newer, cell_id=row["cell_id"] + "-b") for row in known_rows()])
    code, _, err = cli("leaderboard", first, second, "--out", tmp_path / "site")
    assert code == 2 and "refusing to mix results schema versions" in err
    assert f"version {SCHEMA_VERSION} in" in err and f"version {newer} in" in err and err.strip().count("\n") == 0
    code, _, err = cli("leaderboard", second, "--out", tmp_path / "site")
    assert code == 2 and f"written with results schema version {newer}" in err


def test_a_version_1_file_is_read_as_the_current_schema_and_merges_with_it(tmp_path):
    old_columns = [column for column in COLUMNS if column not in UPGRADABLE[1]]
    old = write_results(tmp_path / "old" / "results.csv",
                        [dict(row, schema_version=1) for row in known_rows() if row["seed"] == 0], old_columns)
    new = write_results(tmp_path / "new" / "results.csv", [row for row in known_rows() if row["seed"] != 0])
    table = load_results([old, new])
    assert set(table["schema_version"]) == {SCHEMA_VERSION} and len(table) == len(known_rows())
    assert (table.loc[table["seed"] == 0, "defense_recipe"] == "").all()


def test_a_run_resuming_into_a_version_2_file_rewrites_it_as_the_current_schema(tmp_path):
    from benchmark.results import ResultsFile

    old_columns = [column for column in COLUMNS if column not in UPGRADABLE[2]]
    rows = [dict(row, schema_version=2) for row in known_rows()[:3]]
    path = write_results(tmp_path / "results.csv", rows, old_columns)
    results = ResultsFile(path)
    results.upsert(make_row("blended", "none", 0, 0.8, 0.9, n_classes=10))
    table = load_results([path])
    assert set(table["schema_version"]) == {SCHEMA_VERSION} and len(table) == 4
    assert table["n_classes"].isna().sum() == 3 and table["n_classes"].dropna().tolist() == [10]


def test_two_files_merge_but_conflicting_cells_are_refused(tmp_path):
    rows = known_rows()
    first = write_results(tmp_path / "a" / "results.csv", rows[:9])
    second = write_results(tmp_path / "b" / "results.csv", rows[9:])
    assert len(build(load_results([first, second])).cells) == 10
    clash = write_results(tmp_path / "c" / "results.csv", [dict(rows[0], cell_id="other", attack_config="{}")])
    with pytest.raises(UserError, match="both p / badnet / none seed 0 but different cells"):
        load_results([first, clash])


def test_one_cell_with_different_results_in_two_files_is_warned_about_and_the_last_is_used(tmp_path):
    import warnings

    rows = known_rows()
    first = write_results(tmp_path / "a" / "results.csv", rows)
    same = write_results(tmp_path / "b" / "results.csv", rows[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same cell with the same results, as a rerun gives: nothing to say
        assert len(load_results([first, same])) == len(rows)
    rerun = write_results(tmp_path / "c" / "results.csv", [dict(rows[0], ca=rows[0]["ca"] - 0.02), rows[1]])
    with pytest.warns(UserWarning, match=r"1 cell\(s\) have different results .* did not reproduce") as caught:
        table = load_results([first, rerun])
    assert f"line 2) against CA {rows[0]['ca'] - 0.02:.4f}" in str(caught[0].message)
    assert table.loc[table["cell_id"] == rows[0]["cell_id"], "ca"].item() == pytest.approx(rows[0]["ca"] - 0.02)


def test_the_warning_names_a_row_that_differs_from_the_one_used(tmp_path):
    """Three files with one cell, the first and last alike: the example must be the middle row, not a pair that
    agrees (a part's rows merged with another part's file that repeats them)."""
    rows = known_rows()
    first = write_results(tmp_path / "a" / "results.csv", rows)
    other = write_results(tmp_path / "b" / "results.csv", [dict(rows[0], ca=rows[0]["ca"] - 0.02)])
    again = write_results(tmp_path / "c" / "results.csv", rows[:1])
    with pytest.warns(UserWarning, match="did not reproduce") as caught:
        load_results([first, other, again])
    message = str(caught[0].message)
    assert f"CA {rows[0]['ca'] - 0.02:.4f}, ASR" in message and f"against CA {rows[0]['ca']:.4f}" in message
    assert f"{other} line 2" in message and message.endswith("they differ in ca")


def test_the_warning_names_the_columns_that_differ_when_ca_and_asr_agree(tmp_path):
    rows = known_rows()
    first = write_results(tmp_path / "a" / "results.csv", rows)
    top5 = write_results(tmp_path / "b" / "results.csv", [dict(rows[0], ca_top5=0.123)])
    with pytest.warns(UserWarning, match="did not reproduce") as caught:
        load_results([first, top5])
    assert str(caught[0].message).endswith("they differ in ca_top5")


def test_missing_results_file_is_a_user_error(cli, tmp_path):
    code, _, err = cli("leaderboard", tmp_path / "nowhere")
    assert code == 2 and "no results file at" in err


def test_leaderboard_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, leaderboard.build, leaderboard.html, leaderboard.plots, leaderboard.summary; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_csv_cell_the_leaderboard_writes_starts_a_formula(tmp_path):
    """Text cells starting with = + - @ tab or carriage return get a leading ' (OWASP CSV injection); numbers,
    negative ones included, stay numbers."""
    from benchmark.names import csv_safe
    from leaderboard.aggregate import write_table

    table = pd.DataFrame({"text": ["=cmd|' /C calc'!A0", "+1+1", "-x", "@SUM(A1)", "\tx", "\rx", "plain", "-0.05"],
                          "number": [-0.05, 1.0, -2.5, 0.0, 3.0, -1e-9, 2.0, 4.0]})
    write_table(table, tmp_path / "t.csv")
    header, *rows = csv.reader(io.StringIO((tmp_path / "t.csv").read_bytes().decode(), newline=""))
    assert header == ["text", "number"]
    assert [row[0] for row in rows] == ["'=cmd|' /C calc'!A0", "'+1+1", "'-x", "'@SUM(A1)", "'\tx", "'\nx", "plain",
                                        "-0.05"]  # a lone carriage return would start a row: written as a newline
    assert [float(row[1]) for row in rows] == [-0.05, 1.0, -2.5, 0.0, 3.0, -1e-9, 2.0, 4.0]
    assert csv_safe("-0.05") == "-0.05" and csv_safe(-0.05) == -0.05 and csv_safe(" -1") == " -1"
    assert csv_safe("-1 ") == "'-1 " and csv_safe("'=x") == "'=x"  # a cell already neutralised stays as it is

    write_leaderboard([write_results(tmp_path / "run" / "results.csv", known_rows())], quiet=True)
    for name in ("leaderboard.csv", "pairwise.csv", "detection.csv"):
        for row in csv.reader(io.StringIO((tmp_path / "run" / name).read_text())):
            for cell in row:
                if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
                    float(cell)  # only numbers may start so
