"""The terminal view of a leaderboard: the table a user sees at the end of ``cleanbench run``."""

from __future__ import annotations


import pandas as pd

from leaderboard.aggregate import Leaderboard
from leaderboard.html import number
from leaderboard.rank_groups import inseparable, seeds_text


def print_summary(board: Leaderboard) -> None:
    """Print the per-cell means (greyed where the attack did not take, red where failed) and the ranking."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=140)
    table = Table(title="cleanbench results (mean over seeds)")
    for column in ("preset", "attack", "defense", "seeds", "CA", "ASR", "ΔASR", "DER", "failed", "note"):
        table.add_column(column, justify="right" if column in ("seeds", "CA", "ASR", "ΔASR", "DER", "failed") else "left")
    for row in board.cells.itertuples():
        style = "red" if row.status == "failed" else ("dim" if not pd.isna(row.took) and not row.took else None)
        table.add_row(escape(row.preset), escape(row.attack), escape(row.defense), str(row.n_seeds),
                      number(row.ca_mean), number(row.asr_mean), number(row.delta_asr_mean), number(row.der_mean),
                      str(row.n_failed), escape(row.note), style=style)
    console.print(table)
    ranking = Table(title=f"defense ranking (CA cost within {board.max_ca_cost:g}; then worst-case ASR over "
                          "attacks that took; ties: CA)")
    for column in ("preset", "rank", "group", "defense", "worst ASR", "mean CA", "CA cost", "Pareto", "note"):
        ranking.add_column(column)
    for row in board.ranking.itertuples():
        rank = "—" if pd.isna(row.rank) else str(row.rank)
        ranking.add_row(escape(row.preset), rank, row.rank_group or "—", escape(row.defense), number(row.worst_asr),
                        number(row.mean_ca), number(row.max_ca_cost), "front" if row.pareto else "",
                        escape(row.note), style=None if row.ranked else "dim")
    console.print(ranking)
    pairs = inseparable(board.pairwise)
    if len(pairs):
        table = Table(title="ranked pairs the data cannot separate (paired worst-case ASR, 95%)")
        for column in ("preset", "defense a", "defense b", "ASR a − b", "test", "seeds", "seeds needed"):
            table.add_column(column)
        for pair in pairs.itertuples():
            table.add_row(escape(pair.preset), escape(pair.defense_a), escape(pair.defense_b), f"{pair.diff:+.3f}",
                          pair.test, pair.seeds, seeds_text(pair.seeds_needed))
        console.print(table)
