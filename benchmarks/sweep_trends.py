"""A sweep's trends: for each swept setting and attack, ASR and CA at every value, with and without a defense,
and the rank correlation (Spearman's ρ over the per-seed cells) of each ASR with the swept value, as Markdown.

    python benchmarks/sweep_trends.py RUN... [--defense cleanclip]

This is what a one-factor curve claims, in numbers a reader can check: the CleanCLIP paper's "a larger λ2
steadily lowers ASR at about the same CA" is a negative ρ between λ2 and the ASR after CleanCLIP, with the CA
column flat. ρ is over every seed's cell (not the means), its p-value the two-sided test of ρ = 0; with all
ASRs tied it is undefined (—); read it with the ASR's range over the values, since a rank correlation also
orders differences of a thousandth. ``CA cost`` is the benign control's CA with no defense minus its CA after the
defense, at the same value. With several swept keys, each curve holds the others fixed and its setting names
them. Only cells with status ok count. For a detector (``--defense detect-kdist``) the tables add its AUROC
against the poison manifest and ρ(value, AUROC): in a detection-only sweep (``detection.removal_rate=0``) the ASR
and CA are the victim's at every value, and the AUROC is the curve.
"""
import argparse

import pandas as pd
from scipy.stats import spearmanr

from benchmark.results import BENIGN_ATTACK
from benchmark.results import REFERENCE_DEFENSE as NO_DEFENSE
from leaderboard.html import number
from leaderboard.load import load_results
from leaderboard.sweep_plots import sweep_curves, sweep_rows


def rank_correlation(values: pd.Series, metric: pd.Series) -> str:
    """Spearman's ρ of a metric against the swept value over per-seed cells, with its p-value."""
    if metric.nunique() < 2 or values.nunique() < 2:
        return "—"
    rho, p = spearmanr(values, metric)
    return f"{rho:+.2f} (p = {p:.2g}, n = {len(metric)})"


def spread(cells: pd.DataFrame, metric: str) -> float:
    """Largest minus smallest mean over seeds across the swept values: how far the curve moves."""
    means = cells.groupby("value")[metric].mean()
    return means.max() - means.min()


def trends(runs: list[str], defense: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per setting × key × attack × value, one row per setting × key × attack with the correlations)."""
    rows = sweep_rows(load_results(runs))
    rows = rows[rows["status"] == "ok"]
    points, lines = [], []
    for base, key, mine in sweep_curves(rows):
        for (attack, others), cells in mine[mine["attack"] != BENIGN_ATTACK].groupby(["attack", "others"]):
            benign = mine[(mine["attack"] == BENIGN_ATTACK) & (mine["others"] == others)]
            setting = f"{base} [{others}]" if others else base
            reference, defended = cells[cells["defense"] == NO_DEFENSE], cells[cells["defense"] == defense]
            if defended.empty:  # a curve of another defense's setting, on which this one was not run
                continue
            for value in sorted(cells["value"].unique()):
                at = defended[defended["value"] == value]
                ref = reference[reference["value"] == value]
                cost = (benign[(benign["value"] == value) & (benign["defense"] == NO_DEFENSE)]["ca"].mean()
                        - benign[(benign["value"] == value) & (benign["defense"] == defense)]["ca"].mean())
                points.append({"setting": setting, "swept": key, "attack": attack, "value": value,
                               "seeds": len(at), "asr_reference": ref["asr"].mean(), "asr": at["asr"].mean(),
                               "ca": at["ca"].mean(), "ca_cost": cost, "auroc": at["auroc"].mean()})
            scored = defended.dropna(subset=["auroc"])
            lines.append({"setting": setting, "swept": key, "attack": attack,
                          "rho_asr": rank_correlation(defended["value"], defended["asr"]),
                          "rho_asr_reference": rank_correlation(reference["value"], reference["asr"]),
                          "asr_range": spread(defended, "asr"), "ca_range": spread(defended, "ca"),
                          "rho_auroc": rank_correlation(scored["value"], scored["auroc"]),
                          "auroc_range": spread(scored, "auroc")})
    return pd.DataFrame(points), pd.DataFrame(lines)


def main(runs: list[str], defense: str) -> None:
    points, lines = trends(runs, defense)
    if points.empty:
        print("no sweep rows of an attack in these runs (the benign control alone has no ASR to follow)")
        return
    detector = bool(points["auroc"].notna().any())
    print(f"| setting | swept | attack | value | seeds | ASR, no defense | ASR, {defense} | CA, {defense} | "
          f"CA cost of {defense} (benign) |" + (f" AUROC of {defense} |" if detector else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if detector else ""))
    for r in points.itertuples():
        print(f"| {r.setting} | {r.swept} | {r.attack} | {r.value} | {r.seeds} | {number(r.asr_reference)} | "
              f"{number(r.asr)} | {number(r.ca)} | {number(r.ca_cost)} |"
              + (f" {number(r.auroc)} |" if detector else ""))
    print()
    print(f"| setting | swept | attack | ρ(value, ASR after {defense}) | ρ(value, ASR with no defense) | "
          f"ASR after {defense}: max − min over values | CA after {defense}: max − min |"
          + (" ρ(value, AUROC) | AUROC: max − min |" if detector else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if detector else ""))
    for r in lines.itertuples():
        print(f"| {r.setting} | {r.swept} | {r.attack} | {r.rho_asr} | {r.rho_asr_reference} | "
              f"{number(r.asr_range)} | {number(r.ca_range)} |"
              + (f" {r.rho_auroc} | {number(r.auroc_range)} |" if detector else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding sweep rows")
    parser.add_argument("--defense", default="cleanclip", help="the defense whose curves to read (default cleanclip)")
    args = parser.parse_args()
    main(args.runs, args.defense)
