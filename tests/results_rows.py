"""Hand-made results rows and files for the leaderboard's tests: every schema column, plausible provenance."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmark.results import COLUMNS, SCHEMA_VERSION

EVIL = "<script>alert(1)</script>"

def make_row(attack: str, defense: str, seed: int, ca: float | None, asr: float | None = None,
             status: str = "ok", preset: str = "p", **extra: object) -> dict:
    """A complete results row (every schema column) with plausible provenance."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(schema_version=SCHEMA_VERSION, cell_id=f"{preset}|{attack}|{defense}|{seed}", preset=preset, attack=attack,
               defense=defense, seed=seed, status=status, target="bag", model="tiny", device="cpu",
               poison_count=0 if attack == "none" else 25, attack_version="1", defense_version="1",
               attack_config='{"poison_rate": 0.05}', defense_config='{"epochs": 1}', victim_key=f"v{seed}",
               cleanbench_version="0.1.0", git_commit="abc1234", finished_at="2025-01-01T00:00:00+00:00",
               stage="post-training")
    if status == "ok":
        row.update(ca=ca, ca_low=max(0.0, ca - 0.05), ca_high=min(1.0, ca + 0.05), ca_top5=min(1.0, ca + 0.1),
                   n_clean=300, n_triggered=0 if attack == "none" else 270, time_poison_s=1.0, time_victim_s=10.0,
                   time_defense_s=2.0 if defense != "none" else 0.0, time_eval_s=0.5)
        if attack != "none":
            row.update(asr=asr, asr_low=max(0.0, asr - 0.05), asr_high=min(1.0, asr + 0.05))
    row.update(extra)
    return row


def write_results(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    """Write rows as a results CSV with the given header (all schema columns unless told otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def known_rows() -> list[dict]:
    """Two seeds; badnet takes, wanet does not (no-defense ASR 0.25); answers are worked out in the tests."""
    return [
        make_row("badnet", "none", 0, 0.80, 0.90), make_row("badnet", "none", 1, 0.70, 1.00),
        make_row("badnet", "cleanclip", 0, 0.75, 0.00), make_row("badnet", "cleanclip", 1, 0.72, 0.50),
        make_row("badnet", "tie", 0, 0.70, 0.25), make_row("badnet", "tie", 1, 0.70, 0.25),
        make_row("badnet", "finetune", 0, 0.80, 0.50), make_row("badnet", "finetune", 1, 0.70, 0.60),
        make_row("badnet", "broken", 0, None, status="failed", reason="defense: RuntimeError: out of memory"),
        make_row("wanet", "none", 0, 0.80, 0.30), make_row("wanet", "none", 1, 0.80, 0.20),
        make_row("wanet", "cleanclip", 0, 0.80, 0.90), make_row("wanet", "cleanclip", 1, 0.80, 0.90),
        make_row("wanet", "finetune", 0, 0.80, 0.10),
        make_row("wanet", "finetune", 1, None, status="failed", reason="defense: ValueError: bad"),
        make_row("none", "none", 0, 0.82), make_row("none", "none", 1, 0.80),
        make_row("none", "cleanclip", 0, 0.78), make_row("none", "cleanclip", 1, 0.79),
    ]
