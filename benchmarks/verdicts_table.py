"""The verdicts study's tables (issue 13) as Markdown, from run folders: the ranking under the utility rule with
rank groups and the Pareto front, the pairs the data cannot separate, and CleanCLIP against each other defense,
paired, per attack (over seeds and image by image).

    cleanbench run --attacks all --defenses all --seeds 0,1,2 --plugin benchmarks/plugins/reinitialize.py --out RUN
    python benchmarks/verdicts_table.py RUN... > benchmarks/results/verdicts-DATE.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from leaderboard import DEFAULT_MAX_CA_COST
from leaderboard.aggregate import Leaderboard, build
from leaderboard.load import BENIGN_ATTACK, load_cell_predictions, load_results
from leaderboard.compare import verdicts
from leaderboard.html import number
from leaderboard.rank_groups import inseparable, seeds_text


def ranking_table(board: Leaderboard) -> list[str]:
    lines = ["| rank | group | defense | worst-case ASR | worst attack | mean CA | largest CA cost (on) | Pareto front "
             "| note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in board.ranking.itertuples():
        rank = "—" if pd.isna(row.rank) else str(row.rank)
        cost = f"{number(row.max_ca_cost)} ({row.max_ca_cost_on})" if row.max_ca_cost_on else "—"
        lines.append(f"| {rank} | {row.rank_group or '—'} | {row.defense} | {number(row.worst_asr)} | "
                     f"{row.worst_attack or '—'} | {number(row.mean_ca)} | {cost} | {'yes' if row.pareto else 'no'} "
                     f"| {row.note} |")
    return lines


def inseparable_table(board: Leaderboard) -> list[str]:
    pairs = inseparable(board.pairwise)
    lines = ["| defense a | defense b | worst-case ASR a − b [95% CI] | test | p | seeds needed |",
             "|---|---|---|---|---|---|"]
    for pair in pairs.itertuples():
        lines.append(f"| {pair.defense_a} | {pair.defense_b} | {pair.diff:+.3f} [{pair.ci_low:+.3f}, "
                     f"{pair.ci_high:+.3f}] | {pair.test} | {number(pair.p_value, 4)} | "
                     f"{seeds_text(pair.seeds_needed)} |")
    return lines if len(pairs) else ["Every two ranked defenses are separable at 95%."]


def against_table(board: Leaderboard, defense: str) -> list[str]:
    """``defense`` against every other defense, per attack and metric: the paired t over seeds, and how many
    single seeds the per-image McNemar test separates."""
    pairs = board.pairwise[(board.pairwise["attack"] != "")
                           & ((board.pairwise["defense_a"] == defense) | (board.pairwise["defense_b"] == defense))]
    lines = [f"| attack | metric | other | {defense} − other [95% CI], paired t over seeds | p | verdict | "
             "McNemar: seeds separated | seeds needed |", "|---|---|---|---|---|---|---|---|"]
    for row in verdicts(pairs).sort_values(["attack", "metric", "defense_a", "defense_b"]).itertuples():
        sign = 1 if row.defense_a == defense else -1
        other = row.defense_b if sign == 1 else row.defense_a
        low, high = sorted((sign * row.ci_low, sign * row.ci_high))
        winner = {"a better": row.defense_a, "b better": row.defense_b}.get(row.verdict)
        verdict = f"{winner} better" if winner else row.verdict
        mcnemar = f"{row.mcnemar_separated} of {row.mcnemar_seeds}" if row.mcnemar_seeds else "—"
        attack = "benign control" if row.attack == BENIGN_ATTACK else row.attack
        lines.append(f"| {attack} | {row.metric} | {other} | {sign * row.diff:+.3f} [{low:+.3f}, {high:+.3f}] "
                     f"| {number(row.p_value, 4)} | {verdict} | {mcnemar} | {seeds_text(row.seeds_needed)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--max-ca-cost", type=float, default=DEFAULT_MAX_CA_COST)
    parser.add_argument("--against", default="cleanclip", help="the defense the last table compares with the others")
    options = parser.parse_args()
    results = load_results(options.runs)
    board = build(results, max_ca_cost=options.max_ca_cost, predictions=load_cell_predictions(results))
    sections = [
        (f"Ranking (CA budget {options.max_ca_cost:g})", ranking_table(board)),
        ("Ranked pairs the data cannot separate", inseparable_table(board)),
        (f"{options.against} against each other defense, paired", against_table(board, options.against)),
    ]
    for title, lines in sections:
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
