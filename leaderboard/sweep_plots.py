"""A sweep's curves (:mod:`benchmark.sweeps`): for each swept key of a preset, ASR and CA (and a detector's AUROC)
against its values, one line per (attack, defense), the band the 95% Student-t interval of the mean over seeds.

Rows carry their point in the ``sweep`` column; a point's rows form their own setting on the leaderboard
(``fmnist-tiny [defenses.cleanclip.inmodal_weight=2]``), so each point's ΔASR is against its own no-defense
cell. With several swept keys, a line also holds the other keys fixed, and its label says at which values.
Numeric values are drawn to scale, on a log axis when they are all positive and span a factor of 10 or more (a
poison count of 25 to 600, clean pairs of 1,000 to 10,000: the points would otherwise crowd at the left); others
(text) at even spacing in the order they first appear.
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.results import sweep_label
from leaderboard.aggregate import mean_interval

LINESTYLES = ["-", "--", ":", "-."]
PANEL_METRICS = {"asr": "ASR", "ca": "CA", "auroc": "AUROC"}  # results column: panel title
LOG_AXIS_SPAN = 10  # all values positive and max / min at least this: a log x axis


def log_axis(values: list[object]) -> bool:
    """Whether a numeric sweep's values are drawn on a log axis."""
    positive = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return len(positive) == len(values) > 1 and max(positive) / min(positive) >= LOG_AXIS_SPAN


def sweep_rows(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows of sweep points, with ``base`` (the setting without its point) and ``point`` (a dict)."""
    rows = per_seed[per_seed["sweep"].fillna("").astype(str) != ""].copy()
    if rows.empty:
        return rows.assign(base=[], point=[])
    rows["point"] = rows["sweep"].map(json.loads)
    rows["base"] = [name.removesuffix(f" [{sweep_label(point)}]") for name, point in zip(rows["preset"], rows["point"])]
    return rows


def sweep_curves(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """Each (setting, swept key) of :func:`sweep_rows`' rows, with its rows and two columns: ``value`` (the key's
    value) and ``others`` (the other swept keys' values as a label: a curve holds them fixed). A key swept over a
    single value (``--sweep detection.removal_rate=0``, a setting for the whole run) has no curve."""
    curves = []
    for base, key in sorted({(base, key) for base, point in zip(rows["base"], rows["point"]) for key in point}):
        mine = rows[(rows["base"] == base) & rows["point"].map(lambda point, key=key: key in point)].copy()
        mine["value"] = mine["point"].map(lambda point, key=key: point[key])
        if mine["value"].map(json.dumps).nunique() < 2:
            continue
        mine["others"] = mine["point"].map(
            lambda point, key=key: sweep_label({k: v for k, v in point.items() if k != key}))
        curves.append((base, key, mine))
    return curves


def sweep_figure(per_seed: pd.DataFrame, styles: dict[str, tuple[str, str]]) -> plt.Figure | None:
    """One row of panels per (preset, swept key): ASR, CA and, where a detector's rows carry it, its AUROC
    against the poison manifest (the panel a detection-only sweep is read from: there ASR and CA are the
    victim's at every value); None without a sweep."""
    rows = sweep_rows(per_seed)
    panels = sweep_curves(rows) if not rows.empty else []
    if not panels:
        return None
    metrics = [metric for metric in PANEL_METRICS if metric != "auroc" or _has(rows, "auroc")]
    figure, axes = plt.subplots(len(panels), len(metrics), figsize=(5 * len(metrics), 3.4 * len(panels)),
                                squeeze=False)
    attacks = sorted(rows["attack"].unique())
    for (base, key, mine), row_axes in zip(panels, axes):
        values = list(dict.fromkeys(mine["value"]))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
        for (attack, defense, others), line in mine.groupby(["attack", "defense", "others"], sort=True):
            colour, marker = styles.get(defense, ("#000000", "o"))
            label = f"{attack} × {defense}" + (f" ({others})" if others else "")
            style = LINESTYLES[attacks.index(attack) % len(LINESTYLES)]
            by_value = line.groupby("value", sort=False)
            for metric, axis in zip(metrics, row_axes):
                if not _has(line, metric):  # the benign control's ASR, a non-detector's AUROC
                    continue
                stats = sorted((position[v], *mean_interval(group[metric])) for v, group in by_value)
                x = np.array([s[0] for s in stats])
                mean, low, high = (np.array([s[i] for s in stats], dtype=float) for i in (1, 3, 4))
                axis.plot(x, mean, linestyle=style, marker=marker, color=colour, label=label)
                if np.isfinite(low).any():
                    axis.fill_between(x, np.clip(low, 0, 1), np.clip(high, 0, 1), color=colour, alpha=0.15, linewidth=0)
        for axis, metric in zip(row_axes, metrics):
            name = PANEL_METRICS[metric]
            axis.set(xlabel=key.replace("$", r"\$"), ylabel=name, ylim=(-0.03, 1.03),
                     title=f"{name} ({base})".replace("$", r"\$"))
            if not numeric:
                axis.set_xticks(range(len(values)), [str(v).replace("$", r"\$") for v in values])
            elif log_axis(values):
                axis.set_xscale("log")
                axis.set_xticks(sorted(position.values()), [f"{v:g}" for v in sorted(values)], minor=False)
                axis.minorticks_off()
            axis.grid(alpha=0.3)
        drawn = [axis for axis in row_axes if axis.lines]
        for axis in row_axes:
            axis.set_visible(axis in drawn or axis is row_axes[1])  # an empty panel (AUROC without a detector) hides
        legend = {label: handle for axis in drawn for handle, label in zip(*axis.get_legend_handles_labels())}
        (drawn or [row_axes[1]])[-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left",
                                            bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.tight_layout()
    return figure


def _has(rows: pd.DataFrame, metric: str) -> bool:
    return metric in rows and bool(rows[metric].notna().any())
