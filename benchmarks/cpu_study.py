"""The committed CPU study of the paper subset, read back from its Markdown, and a run's cells set beside it:
what ``gpu_check.py`` compares a GPU run with (the same conclusions are expected, not the same digits)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

STUDY = Path(__file__).resolve().parent / "results" / "cleanclip-study-2026-11-28.md"
PAPER_ATTACKS, PAPER_DEFENSES = ("badnet", "blended"), ("none", "finetune", "cleanclip")
CA_COST = 0.03  # the preset's tuning bound: a defense keeps CA within 3 points of the victim's


def read_cells(results: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(attack, defense) → CA and ASR of a run's ``results.csv`` (cells that finished; ASR NaN for none)."""
    with open(results, newline="") as handle:
        return {(row["attack"], row["defense"]): {"ca": float(row["ca"]), "asr": float(row["asr"] or "nan")}
                for row in csv.DictReader(handle) if row["status"] == "ok"}


STUDY_ROW = re.compile(r"^\| ([\w-]+) \| ([\w-]+) \| \d+ \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| "
                       r"(?:([\d.]+) \[([\d.]+), ([\d.]+)\]|—) \| (.*) \|$")


def cpu_study(path: Path = STUDY) -> dict[tuple[str, str], dict]:
    """The committed CPU study's first table (the default preset's triggers): (attack, defense) → CA and ASR
    mean with their 95% intervals, and the per-seed ASRs."""
    table = path.read_text().split("\n## ")[1]  # the section of the embedded default's triggers
    cells = {}
    for line in table.splitlines():
        match = STUDY_ROW.match(line)
        if match:
            attack, defense, ca, ca_lo, ca_hi, asr, asr_lo, asr_hi, seeds = match.groups()
            cells[(attack, defense)] = {
                "ca": float(ca), "ca_ci": (float(ca_lo), float(ca_hi)), "asr": float(asr or "nan"),
                "asr_ci": (float(asr_lo), float(asr_hi)) if asr else None,
                "asr_seeds": [float(s) for s in seeds.split(",")] if asr else []}
    if not cells:
        raise RuntimeError(f"no table rows found in {path}")
    return cells


def conclusions(cells: dict[tuple[str, str], dict]) -> dict[str, bool | None]:
    """The CPU study's conclusions about the paper subset, judged on ``cells`` (None where a cell is missing)."""
    found: dict[str, bool | None] = {}
    for attack in PAPER_ATTACKS:
        none, finetune, cleanclip = (cells.get((attack, defense)) for defense in PAPER_DEFENSES)
        holds: list[bool | None] = [None] * 4
        if none is not None and finetune is not None and cleanclip is not None:
            holds = [none["asr"] >= 0.5, finetune["asr"] < none["asr"], cleanclip["asr"] < finetune["asr"],
                     none["ca"] - cleanclip["ca"] <= CA_COST]
        claims = ("the backdoor takes (no-defense ASR ≥ 0.5)", "finetune lowers ASR",
                  "cleanclip's ASR is below finetune's", f"cleanclip costs ≤ {CA_COST * 100:.0f} points of CA")
        found.update({f"{attack}: {claim}": value for claim, value in zip(claims, holds)})
    return found


def _figure(cell: dict | None, key: str, interval: bool = False) -> str:
    """A cell's CA or ASR as text, with its 95% interval when ``interval``."""
    if cell is None:
        return "—" if interval else "missing"
    bounds = cell.get(f"{key}_ci") if interval else None
    if interval and bounds is None:
        return "—"
    return f"{cell[key]:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def comparison_tables(run: dict, study: dict) -> list[str]:
    """Markdown: this run's CA/ASR beside the CPU study's, then each conclusion on both."""
    lines = ["| attack | defense | CA here | CA CPU, 3 seeds [95% CI] | ASR here | ASR CPU, 3 seeds [95% CI] | "
             "ASR CPU seed 0 |", "|---|---|---|---|---|---|---|"]
    for key in [(attack, defense) for attack in PAPER_ATTACKS for defense in PAPER_DEFENSES]:
        here, cpu = run.get(key), study.get(key)
        seed0 = f"{cpu['asr_seeds'][0]:.3f}" if cpu and cpu["asr_seeds"] else "—"
        lines.append(f"| {key[0]} | {key[1]} | {_figure(here, 'ca')} | {_figure(cpu, 'ca', True)} | "
                     f"{_figure(here, 'asr')} | {_figure(cpu, 'asr', True)} | {seed0} |")
    verdict = {True: "yes", False: "no", None: "n/a"}
    lines += ["", "| conclusion of the CPU study | CPU (means) | this run | same |", "|---|---|---|---|"]
    here_says = conclusions(run)
    for claim, cpu_value in conclusions(study).items():
        same = "yes" if here_says[claim] == cpu_value and cpu_value is not None else "**no**"
        lines.append(f"| {claim} | {verdict[cpu_value]} | {verdict[here_says[claim]]} | {same} |")
    return lines
