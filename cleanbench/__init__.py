"""cleanbench's public API: everything a plugin author needs, under one import.

A defense or attack written against ``import cleanbench`` keeps working when the engine's modules move; the
internal paths (``defenses.base``, ``benchmark.training``, ...) stay importable but are not a promise::

    import cleanbench

    @cleanbench.DEFENSES.register()
    class MyDefense(cleanbench.Defense):
        ...

    cleanbench.assert_conforms(MyDefense)  # the checks every built-in passes (``cleanbench check``)

What is here:

- the contracts: :class:`Attack` (with :class:`AttackContext`, :class:`PoisonTarget`, :class:`PoisonManifest`),
  :class:`Defense` (with :class:`DefenseContext`, :func:`check_recipe_overrides`) and the other stages'
  :class:`TrainingDefense` and :class:`Detector`, :class:`BringsOwnClassifier` for a defended model with its own
  head;
- registration: the registries :data:`ATTACKS` and :data:`DEFENSES` (``@DEFENSES.register()``);
- data: :class:`PairSet`, :class:`EvalSet`, :data:`Pairs`, and the batching of clean pairs
  (:func:`pair_batches`, :class:`Normalizer`, :data:`Batch`);
- training: :func:`train` (the loop victims and finetuning defenses share), :func:`clip_loss`, :data:`LossFn`,
  :class:`TrainRecipe`;
- evaluation: :func:`classifier_for` and :func:`evaluate` (CA and ASR as the runner computes them);
- configs and errors: :func:`check_range`, :func:`build_config`, :func:`config_dict`, :func:`derive_seed`,
  :class:`UserError`, and :class:`Reporter` (progress and log lines);
- the conformance suite: :func:`check`, :func:`assert_conforms`, :class:`CheckResult`; and :func:`run_grid` (a
  grid from Python, attacks and defenses by name or class, returning a :class:`GridRun`) with
  :func:`write_report` (the gallery and the leaderboard page ``cleanbench run`` writes after it).

Names are imported on first use, so ``import cleanbench`` is cheap and loads no torch until a name needs it.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Attack": "attacks.base", "AttackContext": "attacks.base", "PoisonTarget": "attacks.base",
    "PoisonManifest": "attacks.base",
    "Defense": "defenses.base", "DefenseContext": "defenses.base", "check_recipe_overrides": "defenses.base",
    "TrainingDefense": "defenses.base", "Detector": "defenses.base",
    "ATTACKS": "attacks", "DEFENSES": "defenses", "Registry": "benchmark.registry",
    "PairSet": "benchmark.data.pairs", "EvalSet": "benchmark.data.pairs", "Pairs": "benchmark.data.loader",
    "pair_batches": "benchmark.data.batches", "Normalizer": "benchmark.data.batches", "Batch": "benchmark.data.batches",
    "train": "benchmark.training", "clip_loss": "benchmark.training", "LossFn": "benchmark.training",
    "TrainStats": "benchmark.training", "TrainRecipe": "benchmark.training_recipe",
    "classifier_for": "benchmark.metrics", "evaluate": "benchmark.metrics", "BringsOwnClassifier": "benchmark.metrics",
    "check_range": "benchmark.config", "build_config": "benchmark.config", "config_dict": "benchmark.config",
    "derive_seed": "benchmark.seeding", "UserError": "benchmark.errors", "Reporter": "benchmark.progress",
    "check": "benchmark.conformance", "assert_conforms": "benchmark.conformance",
    "CheckResult": "benchmark.conformance",
    "run_grid": "benchmark.api", "write_report": "benchmark.api", "GridRun": "benchmark.api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

try:
    __version__ = metadata.version("cleanbench")
except metadata.PackageNotFoundError:  # run from a source checkout that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """Import the module behind ``name`` on first use and keep the value here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cleanbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
