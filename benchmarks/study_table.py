"""The CleanCLIP study's table (issue 4): CA and ASR per attack × defense, mean over seeds with the leaderboard's
95% t-interval, and the ASR of every seed beside it, as Markdown.

    cleanbench leaderboard RUN... --out LB
    python benchmarks/study_table.py LB RUN...
"""
import sys
import pandas as pd
from leaderboard.load import load_results

folder = sys.argv[1]
lb = pd.read_csv(f"{folder}/leaderboard.csv")
rows = load_results(sys.argv[2:])
known = ["none", "finetune", "cleanclip", "ssl-only", "supervised"]
order = known + sorted(set(lb.defense) - set(known))  # plugin defenses after the built-ins
print("| attack | defense | seeds | CA mean [95% CI] | ASR mean [95% CI] | ASR per seed |")
print("|---|---|---|---|---|---|")
for attack in ["none", "badnet", "blended", "wanet", "label-consistent"]:
    for defense in order:
        hit = lb[(lb.attack == attack) & (lb.defense == defense)]
        if hit.empty:
            continue
        r = hit.iloc[0]
        per = rows[(rows.attack == attack) & (rows.defense == defense) & (rows.status == "ok")].sort_values("seed")
        def fmt(m, lo, hi):
            return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else f"{m:.3f}"
        asr = "—" if attack == "none" else fmt(r.asr_mean, r.asr_ci_low, r.asr_ci_high)
        seeds = "—" if attack == "none" else ", ".join(f"{a:.3f}" for a in per.asr)
        print(f"| {attack} | {defense} | {int(r.n_seeds)} | {fmt(r.ca_mean, r.ca_ci_low, r.ca_ci_high)} | {asr} | {seeds} |")
