"""``index.html``: one static, self-contained page (inline CSS, JS and images) that works offline as a file.

Everything that comes from results files or plugins (names, configs, failure reasons) is untrusted text, so the
template renders with Jinja2 autoescaping on and no value is ever marked safe; images are inlined as base64 PNG
data URIs, which carry no markup.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from benchmark.results import GALLERY_FILE, SCHEMA_VERSION
from leaderboard.aggregate import CHANCE_MARGIN, NO_DEFENSE, Leaderboard
from leaderboard.load import BENIGN_ATTACK
from leaderboard.plots import FIGURES
from leaderboard.compare import verdicts
from leaderboard.rank_groups import inseparable, seeds_text

PROVENANCE = ["cell_id", "status", "reason", "ca", "asr", "delta_ca", "delta_asr", "der", "n_clean", "n_triggered",
              "time_poison_s", "time_victim_s", "time_defense_s", "time_eval_s", "device", "cleanbench_version",
              "git_commit", "victim_key", "finished_at"]
CONFIG = ["model", "target", "poison_count", "attack_version", "attack_config", "defense_version", "defense_config",
          "stage", "removal_rate"]


def environment() -> jinja2.Environment:
    """The template environment: autoescaping on for every template, undefined names are errors."""
    return jinja2.Environment(loader=jinja2.PackageLoader("leaderboard", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(board: Leaderboard, results: pd.DataFrame, figures: dict[str, Path], out: Path,
           sources: list[str], detection: pd.DataFrame | None = None) -> str:
    """The page's HTML for a leaderboard, its per-seed rows (for the details views), drawn figures and the
    detection table of data-stage defenses (:mod:`leaderboard.detection`)."""
    gallery = Path(out) / GALLERY_FILE  # drawn by `cleanbench run` into its output folder; the page embeds it
    context = {
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "sources": sources,
        "schema_version": SCHEMA_VERSION,
        "threshold": board.threshold,
        "max_ca_cost": board.max_ca_cost,
        "chance_margin": CHANCE_MARGIN,
        "ranking": [_ranking_row(row) for row in board.ranking.to_dict("records")],
        "pareto": [_ranking_row(row) for row in board.ranking.dropna(subset=["worst_asr"])
                   .sort_values(["preset", "worst_asr", "mean_ca"], ascending=[True, True, False]).to_dict("records")],
        "pairs": _pairs(board),
        "detection": [_detection_row(row) for row in (detection if detection is not None else pd.DataFrame())
                      .to_dict("records")],
        "inseparable": [_pair_row(row) for row in inseparable(board.pairwise).to_dict("records")],
        "cells": [_cell(index, row, results, board.per_seed) for index, row in enumerate(board.cells.to_dict("records"))],
        "figures": {name: {"name": name, "caption": FIGURES[name], "png": _data_uri(path),
                           "svg": path.with_suffix(".svg").name} for name, path in figures.items()},
        "gallery": _data_uri(gallery) if gallery.is_file() else None,
        "no_defense": NO_DEFENSE,
        "benign": BENIGN_ATTACK,
    }
    return environment().get_template("index.html.j2").render(**context)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def number(value: object, digits: int = 3) -> str:
    """A metric for display; an em dash where it is missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    # + 0.0: a tiny negative (a mean of float differences) shows as 0.000, not -0.000
    return f"{round(value, digits) + 0.0:.{digits}f}" if isinstance(value, float) else str(value)


def sort_key(value: object) -> str:
    """The ``data-sort`` value: numbers as text the page's JS parses, missing as empty (sorted last)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"  # what JS's Number() reads (it reads "inf" as NaN)
    return str(value)


def _metric(row: dict, metric: str) -> dict:
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    interval = "" if math.isnan(low) or math.isnan(high) else f"[{low:.3f}, {high:.3f}]"
    return {"text": number(row[f"{metric}_mean"]), "ci": interval, "sort": sort_key(row[f"{metric}_mean"])}


def _cell(index: int, row: dict, results: pd.DataFrame, per_seed: pd.DataFrame) -> dict:
    """One table row with its display values, sort keys, greying and its details (configs, per-seed provenance)."""
    key = (row["preset"], row["attack"], row["defense"])
    rows = results[(results["preset"] == key[0]) & (results["attack"] == key[1]) & (results["defense"] == key[2])]
    effects = per_seed.set_index("cell_id")
    seeds = []
    for seed_row in rows.sort_values("seed").to_dict("records"):
        effect = effects.loc[seed_row["cell_id"]] if seed_row["cell_id"] in effects.index else {}
        values = {**seed_row, **{name: effect.get(name, math.nan) for name in ("delta_ca", "delta_asr", "der")},
                  "source": f"{seed_row['source']}:{seed_row['line']}"}
        seeds.append({name: number(values[name], 1 if name.startswith("time_") else 4)
                      for name in ("seed", *PROVENANCE, "source")})
    first = rows.sort_values("seed").iloc[0]
    ok = rows[rows["status"] == "ok"].sort_values("seed")
    per_seed = {metric: " · ".join(number(value) for value in ok[metric]) if len(ok) > 1 else ""
                for metric in ("ca", "asr")}
    benign = row["attack"] == BENIGN_ATTACK
    greyed = not benign and (row["took"] is pd.NA or not bool(row["took"]))
    return {
        "id": f"cell-{index}", "preset": row["preset"], "attack": row["attack"], "defense": row["defense"],
        "stage": row["stage"], "status": row["status"], "seeds": row["n_seeds"], "failed": row["n_failed"], "note": row["note"],
        "benign": benign, "greyed": greyed, "ci_method": row["ci_method"], "evidence": row["evidence"],
        "near_chance": row["near_chance"] is not pd.NA and bool(row["near_chance"]), "per_seed": per_seed,
        "rank": number(row["rank"]), "rank_sort": sort_key(row["rank"]), "rank_group": row["rank_group"],
        "metrics": {metric: _metric(row, metric) for metric in ("ca", "asr", "delta_ca", "delta_asr", "der")},
        "time": number(row["time_defense_s_mean"], 1), "time_sort": sort_key(row["time_defense_s_mean"]),
        "config": [(name, _pretty(first[name])) for name in CONFIG],
        "seed_labels": [seed["seed"] for seed in seeds],
        "provenance": [(name, [seed[name] for seed in seeds]) for name in (*PROVENANCE, "source")],
    }


def _pretty(value: object) -> str:
    """Configs are canonical JSON in one line; indent them for reading (anything else as is)."""
    text = number(value)
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return text


def _ranking_row(row: dict) -> dict:
    return {"preset": row["preset"], "defense": row["defense"], "rank": number(row["rank"]),
            "rank_sort": sort_key(row["rank"]), "rank_group": row["rank_group"] or "—",
            "pareto": bool(row["pareto"]), "beaten_by": row["beaten_by"], "useful": bool(row["useful"]),
            "max_ca_cost": number(row["max_ca_cost"]), "max_ca_cost_sort": sort_key(row["max_ca_cost"]),
            "max_ca_cost_on": row["max_ca_cost_on"], "worst_asr": number(row["worst_asr"]),
            "worst_asr_sort": sort_key(row["worst_asr"]), "worst_attack": row["worst_attack"],
            "mean_ca": number(row["mean_ca"]), "mean_ca_sort": sort_key(row["mean_ca"]),
            "ca_cost": number(row["ca_cost"]), "ca_cost_sort": sort_key(row["ca_cost"]),
            "time": number(row["time_defense_s"], 1), "time_sort": sort_key(row["time_defense_s"]),
            "note": row["note"], "evidence": row["evidence"], "stage": row["stage"]}


def _detection_row(row: dict) -> dict:
    """A detection-table row: each metric's mean with its interval over seeds."""
    def metric(name: str) -> dict:
        low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        interval = "" if pd.isna(low) or pd.isna(high) else f"[{low:.3f}, {high:.3f}]"
        return {"value": number(row[f"{name}_mean"]), "sort": sort_key(row[f"{name}_mean"]), "ci": interval}

    return {"preset": row["preset"], "attack": row["attack"], "defense": row["defense"], "seeds": row["seeds"],
            "removal_rate": number(row["removal_rate"]),
            **{name: metric(name) for name in ("auroc", "auprc", "tpr_at_1fpr", "tpr_at_5fpr", "removed_precision",
                                                "removed_recall")}}


def _pairs(board: Leaderboard) -> list[dict]:
    """One row per compared pair and metric: the primary test's verdict, and how many single seeds McNemar
    separates, so a reader sees both the across-seed and the per-image evidence."""
    rows = []
    for row in verdicts(board.pairwise).to_dict("records"):
        mcnemar = f"{row['mcnemar_separated']} of {row['mcnemar_seeds']} seeds" if row["mcnemar_seeds"] else "—"
        rows.append({**_pair_row(row), "mcnemar": mcnemar})
    return rows


def _pair_row(row: dict) -> dict:
    interval = ("" if math.isnan(row["ci_low"]) or math.isnan(row["ci_high"])
                else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")
    return {"preset": row["preset"], "attack": row["attack"] or "worst case", "metric": row["metric"],
            "defense_a": row["defense_a"], "defense_b": row["defense_b"], "test": row["test"], "seeds": row["seeds"],
            "diff": "—" if math.isnan(row["diff"]) else f"{row['diff']:+.3f}", "diff_sort": sort_key(row["diff"]),
            "ci": interval, "p": number(row["p_value"], 4), "p_sort": sort_key(row["p_value"]),
            "verdict": row["verdict"], "separable": row["verdict"] != "not separable",
            "seeds_needed": seeds_text(row["seeds_needed"]), "seeds_needed_sort": sort_key(row["seeds_needed"])}
