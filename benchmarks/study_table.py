"""A study's table: CA and ASR per setting × attack × defense, mean over seeds with the leaderboard's 95%
t-interval, and the ASR of every seed beside it, as Markdown.

    cleanbench leaderboard RUN... --out LB
    python benchmarks/study_table.py LB RUN... [--defenses none,finetune,cleanclip]
    python benchmarks/study_table.py LB --detection [--defenses detect-kdist]

``--detection`` prints the detectors' table instead (``LB/detection.csv``: AUROC, AUPRC, TPR at 1% and 5% FPR and
the removed pairs' precision and recall, mean over seeds [95% t-interval]).

Attacks come in the order: benign control, the paper's four, then the rest alphabetically; defenses: the
built-ins, then plugins. A column for the setting appears when the runs hold more than one (e.g. a preset and
its ``[clip+ssl victim]`` variant, or a sweep's points, in the order of their values). ``--defenses`` keeps only those defenses (a study that shares its folder with
a larger one).
"""
import argparse
import re

import pandas as pd

from leaderboard.detection import DETECTION_METRICS
from leaderboard.html import number
from leaderboard.load import load_results

PAPER_ATTACKS = ["none", "badnet", "blended", "wanet", "label-consistent"]
BUILT_IN_DEFENSES = ["none", "finetune", "cleanclip", "ssl-only", "supervised"]


def ordered(values, first):
    return [v for v in first if v in set(values)] + sorted(set(values) - set(first))


def natural(text: str) -> list:
    """Sort key that orders the numbers in a setting's label by value (a sweep's points: 25, 75, 200, 600)."""
    return [float(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]


def interval(mean, low, high) -> str:
    return f"{number(mean)} [{number(low)}, {number(high)}]" if pd.notna(low) else number(mean)


def main(folder: str, runs: list[str], defenses: list[str] | None = None) -> None:
    lb = pd.read_csv(f"{folder}/leaderboard.csv")
    if defenses:
        lb = lb[lb.defense.isin(defenses)]
    rows = load_results(runs)
    settings = sorted(lb.preset.unique(), key=natural)
    several = len(settings) > 1
    print(("| setting " if several else "") + "| attack | defense | seeds | CA mean [95% CI] | ASR mean [95% CI] | ASR per seed |")
    print(("|---" if several else "") + "|---|---|---|---|---|---|")
    for setting in settings:
        here = lb[lb.preset == setting]
        for attack in ordered(here.attack, PAPER_ATTACKS):
            for defense in ordered(here.defense, BUILT_IN_DEFENSES):
                hit = here[(here.attack == attack) & (here.defense == defense)]
                if hit.empty:
                    continue
                r = hit.iloc[0]
                per = rows[(rows.preset == setting) & (rows.attack == attack) & (rows.defense == defense)
                           & (rows.status == "ok")].sort_values("seed")
                asr = "—" if attack == "none" else interval(r.asr_mean, r.asr_ci_low, r.asr_ci_high)
                seeds = "—" if attack == "none" else ", ".join(number(a) for a in per.asr)
                lead = f"| {setting} " if several else ""
                print(f"{lead}| {attack} | {defense} | {int(r.n_seeds)} | "
                      f"{interval(r.ca_mean, r.ca_ci_low, r.ca_ci_high)} | {asr} | {seeds} |")


def detection(folder: str, defenses: list[str] | None = None) -> None:
    table = pd.read_csv(f"{folder}/detection.csv")
    if defenses:
        table = table[table.defense.isin(defenses)]
    settings = sorted(table.preset.unique(), key=natural)
    several = len(settings) > 1
    print(("| setting " if several else "") + "| attack | detector | seeds | AUROC | AUPRC | TPR at 1% FPR | "
          "TPR at 5% FPR | removed: precision | removed: recall |")
    print(("|---" if several else "") + "|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        here = table[table.preset == setting]
        for attack in ordered(here.attack, PAPER_ATTACKS):
            for _, r in here[here.attack == attack].sort_values("defense").iterrows():
                cells = " | ".join(interval(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in DETECTION_METRICS)
                print(("| " + setting + " " if several else "") + f"| {attack} | {r.defense} | {int(r.n_seeds)} | "
                      f"{cells} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("leaderboard", help="the folder `cleanbench leaderboard --out` wrote")
    parser.add_argument("runs", nargs="*", help="the run folders the leaderboard was made from")
    parser.add_argument("--defenses", help="comma-separated: keep only these defenses")
    parser.add_argument("--detection", action="store_true", help="the detectors' table (detection.csv) instead")
    args = parser.parse_args()
    chosen = args.defenses.split(",") if args.defenses else None
    if args.detection:
        detection(args.leaderboard, chosen)
    elif not args.runs:
        parser.error("the run folders are needed for the CA/ASR table (or give --detection)")
    else:
        main(args.leaderboard, args.runs, chosen)
