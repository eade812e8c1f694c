"""The leaderboard's figures, drawn with matplotlib's Agg backend (no display), each saved as PNG and SVG: the
Pareto view of the ranking, CA against ASR per attack, the ASR heatmap, every seed's ASR (so one bad seed cannot
hide in a mean), the CA cost on the benign control, and a sweep's curves (:mod:`leaderboard.sweep_plots`).

Colours are the Okabe–Ito palette and every defense also gets its own marker, so the plots read in greyscale
and for colour-blind readers; the heatmap uses ``cividis``, built for the same purpose. Names from results
files are drawn as plain text (mathtext ``$`` is escaped).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from leaderboard.aggregate import NO_DEFENSE, Leaderboard  # noqa: E402
from leaderboard.load import BENIGN_ATTACK  # noqa: E402
from leaderboard.sweep_plots import sweep_figure  # noqa: E402

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "*", "h", "<", ">"]
GREY = "#999999"
FIGURES = {"pareto": "Pareto view: mean CA against worst-case ASR per defense",
           "tradeoff": "CA against ASR per attack", "asr_heatmap": "ASR by attack and defense",
           "asr_seeds": "ASR of every seed per attack and defense", "ca_cost": "CA cost on the benign control",
           "sweeps": "ASR, CA and a detector's AUROC against each swept setting: mean over seeds, band = 95% "
                     "interval of the mean"}


def text(value: object) -> str:
    """A results string as literal plot text: matplotlib would read ``$...$`` as math."""
    return str(value).replace("$", r"\$")


def defense_styles(defenses: list[str]) -> dict[str, tuple[str, str]]:
    """A (colour, marker) per defense, stable across figures; no defense is always black crosses."""
    others = [name for name in sorted(defenses) if name != NO_DEFENSE]
    styles = {name: (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(others)}
    styles[NO_DEFENSE] = ("#000000", "X")
    return styles


def draw_all(board: Leaderboard, out: Path) -> dict[str, Path]:
    """Draw every figure into ``out``; returns figure name → PNG path (an SVG lies beside each)."""
    styles = defense_styles(list(board.cells["defense"].unique()))
    drawers = {"pareto": _pareto, "tradeoff": lambda b, s: _tradeoff(b.cells, s),
               "asr_heatmap": lambda b, s: _heatmap(b.cells, s), "asr_seeds": _seed_strips,
               "ca_cost": lambda b, s: _ca_cost(b.cells, s), "sweeps": lambda b, s: sweep_figure(b.per_seed, s)}
    drawn = {}
    for name in FIGURES:
        figure = drawers[name](board, styles)
        if figure is None:
            continue
        drawn[name] = _save(figure, Path(out) / name)
    return drawn


def _save(figure: plt.Figure, stem: Path) -> Path:
    figure.savefig(stem.with_suffix(".png"), dpi=150, bbox_inches="tight")
    figure.savefig(stem.with_suffix(".svg"), bbox_inches="tight")
    plt.close(figure)
    return stem.with_suffix(".png")


def _attacked(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[(cells["attack"] != BENIGN_ATTACK) & (cells["status"] == "ok")]


def _tradeoff(cells: pd.DataFrame, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """One panel per (preset, attack): a marker per defense at (ASR, CA); up and left is better."""
    attacked = _attacked(cells)
    panels = list(attacked.groupby(["preset", "attack"], sort=True))
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, ((preset, attack), group) in zip(axes.flat, panels):
        took = bool(group["took"].fillna(False).astype(bool).any())
        for row in group.itertuples():
            colour, marker = styles[row.defense]
            _, caps, bars = axis.errorbar(
                row.asr_mean, row.ca_mean, xerr=_err(row.asr_mean, row.asr_ci_low, row.asr_ci_high),
                yerr=_err(row.ca_mean, row.ca_ci_low, row.ca_ci_high), fmt=marker, color=colour, markersize=9,
                markeredgecolor="black", markeredgewidth=0.6, capsize=2, elinewidth=1, zorder=3,
                alpha=1.0 if took else 0.45)
            for line in (*caps, *bars):  # intervals stay visible but behind the markers
                line.set_alpha(0.35)
        control = cells[(cells["preset"] == preset) & (cells["attack"] == BENIGN_ATTACK)
                        & (cells["defense"] == NO_DEFENSE) & (cells["status"] == "ok")]
        if len(control):
            axis.axhline(control["ca_mean"].iloc[0], color=GREY, linestyle="--", linewidth=1)
            axis.annotate("benign control CA", (1.0, control["ca_mean"].iloc[0]), xycoords=("axes fraction", "data"),
                          ha="right", va="bottom", fontsize=8, color="#555555")
        title = f"{text(attack)} ({text(preset)})" + ("" if took else " — did not take")
        axis.set_title(title, fontsize=10, color="black" if took else GREY)
        axis.set(xlim=(-0.03, 1.03), xlabel="ASR (lower is better)", ylabel="CA (higher is better)")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], linestyle="", marker=marker, color=colour, markeredgecolor="black",
                          markersize=9, label=text(name) + (" (no defense)" if name == NO_DEFENSE else ""))
               for name, (colour, marker) in sorted(styles.items())]
    figure.legend(handles=handles, title="defense", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.suptitle("Trade-off: clean accuracy against attack success, one marker per defense", fontsize=11)
    figure.tight_layout()
    return figure


def _err(mean: float, low: float, high: float) -> list[list[float]] | None:
    """Asymmetric error-bar lengths, or None when the interval is unknown."""
    if any(np.isnan(value) for value in (mean, low, high)):
        return None
    return [[max(0.0, mean - low)], [max(0.0, high - mean)]]


def _heatmap(cells: pd.DataFrame, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """Mean ASR per attack (rows) × defense (columns), one panel per preset; greyed rows did not take."""
    attacked = cells[cells["attack"] != BENIGN_ATTACK]
    if attacked.empty:
        return None
    presets = sorted(attacked["preset"].unique())
    defenses = sorted(attacked["defense"].unique(), key=lambda name: (name != NO_DEFENSE, name))
    attacks_per = {preset: sorted(attacked.loc[attacked["preset"] == preset, "attack"].unique()) for preset in presets}
    height = sum(0.5 * len(names) + 1.4 for names in attacks_per.values())
    figure, axes = plt.subplots(len(presets), 1, figsize=(1.1 * len(defenses) + 3, height), squeeze=False)
    for axis, preset in zip(axes[:, 0], presets):
        attacks = attacks_per[preset]
        table = attacked[attacked["preset"] == preset].set_index(["attack", "defense"])
        values = np.full((len(attacks), len(defenses)), np.nan)
        for i, attack in enumerate(attacks):
            for j, defense in enumerate(defenses):
                if (attack, defense) not in table.index:
                    continue
                row = table.loc[(attack, defense)]
                values[i, j] = row["asr_mean"]
                label = "failed" if row["status"] == "failed" else f"{row['asr_mean']:.2f}"
                dim = not bool(row["took"]) if not pd.isna(row["took"]) else True
                colour = "white" if not np.isnan(values[i, j]) and values[i, j] < 0.55 else "black"
                axis.text(j, i, label, ha="center", va="center", fontsize=9,
                          color=GREY if dim and row["status"] == "ok" else colour)
            took = table.loc[attack, "took"].fillna(False).astype(bool).any()
            if not took:
                axis.axhspan(i - 0.5, i + 0.5, facecolor="white", alpha=0.7, hatch="//", edgecolor=GREY, zorder=2)
        image = axis.imshow(values, cmap="cividis", vmin=0, vmax=1, aspect="auto", zorder=1)
        axis.set_xticks(range(len(defenses)), [text(name) for name in defenses], rotation=30, ha="right")
        axis.set_yticks(range(len(attacks)), [text(name) + ("" if table.loc[name, "took"].fillna(False).astype(bool).any()
                                                             else "\n(did not take)") for name in attacks])
        axis.set_title(f"ASR (lower is better) — {text(preset)}", fontsize=10)
        figure.colorbar(image, ax=axis, label="ASR", fraction=0.05)
    figure.tight_layout()
    return figure


def _ca_cost(cells: pd.DataFrame, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """Per defense, the CA it costs on the clean victim (benign control), with its 95% interval."""
    control = cells[(cells["attack"] == BENIGN_ATTACK) & (cells["status"] == "ok")
                    & (cells["defense"] != NO_DEFENSE)]
    if control.empty:
        return None
    presets = sorted(control["preset"].unique())
    figure, axes = plt.subplots(1, len(presets), figsize=(5 * len(presets), 0.45 * control.groupby("preset").size().max() + 1.6),
                                squeeze=False)
    for axis, preset in zip(axes[0], presets):
        group = control[control["preset"] == preset].sort_values("defense")
        positions = np.arange(len(group))
        colours = [styles[name][0] for name in group["defense"]]
        errors = np.array([_err(m, lo, hi) or [[0.0], [0.0]] for m, lo, hi in
                           zip(group["delta_ca_mean"], group["delta_ca_ci_low"], group["delta_ca_ci_high"])])
        axis.barh(positions, group["delta_ca_mean"], color=colours, edgecolor="black", linewidth=0.6,
                  xerr=errors[:, :, 0].T, capsize=3)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(positions, [text(name) for name in group["defense"]])
        axis.invert_yaxis()
        axis.set(xlabel="ΔCA = CA(no defense) − CA(defense); positive = accuracy lost",
                 title=f"CA cost on the benign control — {text(preset)}")
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _pareto(board: Leaderboard, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """Mean CA against worst-case ASR per defense, one panel per preset; the Pareto front joined by a line,
    defenses outside the CA budget drawn hollow."""
    ranking = board.ranking.dropna(subset=["worst_asr", "mean_ca"])
    if ranking.empty:
        return None
    presets = sorted(ranking["preset"].unique())
    figure, axes = plt.subplots(1, len(presets), figsize=(5.6 * len(presets), 4.4), squeeze=False)
    for axis, preset in zip(axes[0], presets):
        group = ranking[ranking["preset"] == preset]
        front = group[group["pareto"]].sort_values("worst_asr")
        axis.step(front["worst_asr"], front["mean_ca"], where="post", color=GREY, linewidth=1, zorder=1,
                  label="Pareto front")
        for row in group.itertuples():
            colour, marker = styles[row.defense]
            axis.plot(row.worst_asr, row.mean_ca, marker=marker, markersize=10, linestyle="",
                      color=colour if row.useful else "white", markeredgecolor=colour if not row.useful else "black",
                      markeredgewidth=1.5 if not row.useful else 0.6, zorder=3)
            label = text(row.defense) + ("" if row.useful else " (CA cost over budget)")
            axis.annotate(label, (row.worst_asr, row.mean_ca), textcoords="offset points", xytext=(7, 4),
                          fontsize=8, color="black" if row.ranked else GREY)
        axis.set(xlim=(-0.03, 1.03), xlabel="worst-case ASR over attacks that took (lower is better)",
                 ylabel="mean CA over those attacks (higher is better)",
                 title=f"Pareto view — {text(preset)} (CA budget {board.max_ca_cost:g})")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8, frameon=False)
    figure.tight_layout()
    return figure


def _seed_strips(board: Leaderboard, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """Every seed's ASR per attack × defense (points), with the mean (bar), one panel per (preset, attack)."""
    per_seed = board.per_seed[board.per_seed["attack"] != BENIGN_ATTACK]
    if per_seed.empty:
        return None
    panels = list(per_seed.groupby(["preset", "attack"], sort=True))
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    took = board.cells.set_index(["preset", "attack", "defense"])["took"]
    for axis, ((preset, attack), group) in zip(axes.flat, panels):
        defenses = sorted(group["defense"].unique(), key=lambda name: (name != NO_DEFENSE, name))
        for position, defense in enumerate(defenses):
            values = group.loc[group["defense"] == defense].sort_values("seed")
            colour, marker = styles[defense]
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            axis.scatter(position + offsets, values["asr"], color=colour, marker=marker, s=28,
                         edgecolors="black", linewidths=0.5, zorder=3)
            axis.hlines(values["asr"].mean(), position - 0.3, position + 0.3, color="black", linewidth=1.2, zorder=2)
        flag = took.get((preset, attack, NO_DEFENSE), pd.NA)
        dim = pd.isna(flag) or not bool(flag)
        axis.set_xticks(range(len(defenses)), [text(name) for name in defenses], rotation=30, ha="right",
                        fontsize=8)
        axis.set(ylim=(-0.03, 1.03), ylabel="ASR per seed")
        axis.set_title(f"{text(attack)} — {text(preset)}" + (" (did not take)" if dim else ""), fontsize=10,
                       color=GREY if dim else "black")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("ASR of every seed (points) and their mean (bar)", fontsize=11)
    figure.tight_layout()
    return figure
