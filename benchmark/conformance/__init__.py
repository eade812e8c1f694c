"""The conformance suite: the checks every built-in attack and defense passes, run on a plugin before an hour of
grid does it (``cleanbench check NAME|FILE``, or :func:`check` / :func:`assert_conforms` from pytest).

- every component: a usable name and version (``metadata``); its ``Config`` is a frozen dataclass
  (``config-frozen``) that survives a preset's TOML (``config-toml``); the same seed gives the same result
  (``deterministic``);
- an attack (:mod:`benchmark.conformance.attack_checks`): ``apply`` keeps shape, dtype and range and neither
  ``apply`` nor ``poison`` changes its input;
- a defense (:mod:`benchmark.conformance.defense_checks`): it runs on the test-sized preset within a time
  budget and returns a model the evaluator scores, and never receives the test set or the poison manifest.

Checks run on the CPU on :func:`~benchmark.conformance.common.check_preset` (the default preset at test size),
so a defense check takes seconds plus the defense's own time.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from attacks import ATTACKS
from attacks.base import Attack
from benchmark import plugins
from benchmark.conformance.attack_checks import check_attack
from benchmark.conformance.common import CheckResult, check_preset
from benchmark.conformance.defense_checks import check_defense
from benchmark.errors import UserError, did_you_mean
from benchmark.presets import Preset
from benchmark.task import build_task
from defenses import DEFENSES
from defenses.base import Defense

DEFAULT_TIME_BUDGET = 300.0  # seconds a defense may take on the test-sized preset

__all__ = ["CheckResult", "DEFAULT_TIME_BUDGET", "assert_conforms", "check", "resolve"]


def check(component: str | type, *, time_budget: float = DEFAULT_TIME_BUDGET, preset: Preset | None = None,
          no_autoload: bool = False) -> list[CheckResult]:
    """Run the conformance checks on ``component``: an Attack or Defense class, a registered name (built-in or
    an installed package's entry point), a plugin file ``path/to/file.py`` (each attack and defense it defines)
    or ``module:Class``. ``preset`` defaults to the test-sized default preset. Returns one result per check;
    a component that cannot be found or loaded is a :class:`UserError`."""
    if time_budget <= 0:
        raise UserError(f"time budget = {time_budget!r} s is out of range; allowed: (0, inf)")
    classes = resolve(component, no_autoload=no_autoload)
    chosen = preset or check_preset()
    task = build_task(chosen)
    results: list[CheckResult] = []
    with _global_generators_kept(), tempfile.TemporaryDirectory(prefix="cleanbench-check-") as cache:
        for cls in classes:
            if issubclass(cls, Attack):
                results += check_attack(cls, chosen, task, Path(cache))
            else:
                results += check_defense(cls, chosen, task, time_budget)
    return results


def assert_conforms(component: str | type, **options) -> None:
    """:func:`check`, raising an ``AssertionError`` that lists every failed check (for a plugin's own tests)."""
    failed = [result.line() for result in check(component, **options) if not result.ok]
    if failed:
        raise AssertionError("conformance checks failed:\n" + "\n".join(failed))


@contextlib.contextmanager
def _global_generators_kept() -> Iterator[None]:
    """The checks reseed torch's, Python's and NumPy's global generators; the caller gets its own states back."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def resolve(component: str | type, *, no_autoload: bool = False) -> list[type]:
    """The attack and defense classes ``component`` names (see :func:`check`)."""
    if isinstance(component, type):
        if not issubclass(component, (Attack, Defense)):
            raise UserError(f"{component.__qualname__} is neither an Attack nor a Defense subclass")
        return [component]
    spec = str(component)
    if spec.endswith(".py") or ":" in spec or Path(spec).is_file():
        classes = plugins.load_plugin(spec)
        if not classes:
            raise UserError(f"plugin {spec} defines no Attack or Defense subclass with a name")
        return classes
    failures = [] if no_autoload else plugins.load_entry_points()
    found = [registry.get(spec) for registry in (ATTACKS, DEFENSES) if spec in registry]
    if found:
        return found
    for failure in failures:
        if failure.name == spec:
            raise UserError(f"plugin '{spec}' from {failure.origin} failed to load: {failure.error}")
    names = sorted(set(ATTACKS.names()) | set(DEFENSES.names()))
    raise UserError(f"Unknown attack or defense '{spec}'.{did_you_mean(spec, names)} Available: {', '.join(names)} "
                    "(or a plugin file.py or module:Class).")
