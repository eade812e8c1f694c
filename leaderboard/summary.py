"""The terminal view of a leaderboard: the table a user sees at the end of ``cleanbench run``."""

from __future__ import annotations

import math

import pandas as pd

from leaderboard.aggregate import Leaderboard


def _fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


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
                      _fmt(row.ca_mean), _fmt(row.asr_mean), _fmt(row.delta_asr_mean), _fmt(row.der_mean),
                      str(row.n_failed), escape(row.note), style=style)
    console.print(table)
    ranking = Table(title="defense ranking (worst-case ASR over attacks that took; ties: CA)")
    for column in ("preset", "rank", "defense", "worst ASR", "mean CA", "CA cost", "note"):
        ranking.add_column(column)
    for row in board.ranking.itertuples():
        rank = "—" if pd.isna(row.rank) else str(row.rank)
        ranking.add_row(escape(row.preset), rank, escape(row.defense), _fmt(row.worst_asr), _fmt(row.mean_ca),
                        _fmt(row.ca_cost), escape(row.note))
    console.print(ranking)
