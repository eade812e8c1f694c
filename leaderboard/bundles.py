"""Bundles (``cleanbench submit``) as leaderboard inputs, beside run folders and results files.

A bundle is checked and extracted into a scratch folder (:func:`benchmark.bundle.open_bundle`: safe paths, size
limits, manifest and source hashes; no plugin code is run) and then read as the run folder it is laid out as.
Each input's rows carry their ``evidence``: ``verified`` for a bundle with a verification record beside it that
``cleanbench verify`` wrote for this very file after its rerun cells all matched, ``self-reported`` for
everything else (a bundle nobody verified, a plain results file or run folder).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.bundle import is_verified, open_bundle
from benchmark.results import RESULTS_FILE
from leaderboard.load import resolve_results_path

VERIFIED = "verified"
SELF_REPORTED = "self-reported"


@dataclass(frozen=True)
class Input:
    """One leaderboard input as a results path to read, the name to show for it and its evidence."""

    path: Path
    label: str
    evidence: str


def is_bundle(path: Path) -> bool:
    """A zip file, or a file named ``*.zip`` (a damaged or empty one is then refused as a bundle, not read as CSV)."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path))


def open_inputs(paths: list[Path], scratch: Path) -> list[Input]:
    """Each path as an :class:`Input`; bundles are extracted under ``scratch`` (which outlives the reading)."""
    inputs = []
    for index, path in enumerate(map(Path, paths)):
        if not is_bundle(path):
            inputs.append(Input(path, "", SELF_REPORTED))
            continue
        bundle = open_bundle(path, Path(scratch) / f"bundle-{index}")
        evidence = VERIFIED if is_verified(bundle) else SELF_REPORTED
        inputs.append(Input(bundle.results, f"{path}:{RESULTS_FILE}", evidence))
    return inputs


def with_evidence(results: pd.DataFrame, inputs: list[Input]) -> pd.DataFrame:
    """``results`` with each row's ``evidence``, and a bundle's rows pointing at the bundle rather than at the
    scratch folder it was read from."""
    by_source = {str(resolve_results_path(item.path)): item for item in inputs}
    labels = [by_source[source].label or source if source in by_source else source for source in results["source"]]
    evidence = [by_source[source].evidence if source in by_source else SELF_REPORTED for source in results["source"]]
    return results.assign(source=labels, evidence=evidence)
