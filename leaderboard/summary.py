"""The results table a user sees at the end of ``cleanbench run``: CA and ASR per cell, averaged over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of CA and ASR per (preset, attack, defense), counting seeds and failed cells."""
    ok = results[results["status"] == "ok"]
    grouped = ok.groupby(["preset", "attack", "defense"], sort=True)
    table = grouped.agg(ca=("ca", "mean"), asr=("asr", "mean"), seeds=("seed", "nunique")).reset_index()
    failed = results[results["status"] != "ok"].groupby(["preset", "attack", "defense"]).size()
    table["failed"] = [int(failed.get((p, a, d), 0)) for p, a, d in zip(table.preset, table.attack, table.defense)]
    return table


def print_summary(path: Path) -> None:
    """Print a rich table of ``aggregate`` for the results file at ``path``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    if not Path(path).exists():
        console.print(f"no results at {path}")
        return
    results = pd.read_csv(path)
    table = Table(title=f"cleanbench results ({path})")
    for column in ("preset", "attack", "defense", "seeds", "CA", "ASR", "failed"):
        table.add_column(column, justify="right" if column in ("seeds", "CA", "ASR", "failed") else "left")
    for row in aggregate(results).itertuples():
        asr = "—" if pd.isna(row.asr) else f"{row.asr:.3f}"
        table.add_row(row.preset, row.attack, row.defense, str(row.seeds), f"{row.ca:.3f}", asr, str(row.failed))
    for row in results[results["status"] != "ok"].itertuples():
        console.print(f"failed: {row.attack} × {row.defense} seed {row.seed}: {row.reason}")
    console.print(table)
