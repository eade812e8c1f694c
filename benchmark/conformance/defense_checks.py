"""The checks of a defense, on a victim backdoored with BadNet on the check's preset, exactly as the runner
hands it over at the defense's stage (its entry in :data:`benchmark.stages.STAGES` says which: the victim's
weights or a model initialised as the victim was, the clean pairs or the poisoned training pairs, with a
:class:`DefenseContext`): it runs within the time budget and returns what its stage returns, a model the
evaluator scores or one finite score per pair it received; a second run with the same seed gives the
same weights (scores); and what it receives holds neither the test set nor the poison manifest.

Determinism is checked as the runner runs a defense: torch's global generator seeded with ``context.seed``
(CleanCLIP's augmentations draw from it), Python's and NumPy's left as they are, here put in a different state
for each run. A defense that draws from them (or from the clock) would give another row each time its cell ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import signal
import threading
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from attacks import ATTACKS
from attacks.base import Attack, PoisonManifest
from benchmark.conformance.common import SEED, CheckResult, attempt, config_checks, metadata_check
from benchmark.config import config_dict
from benchmark.data.batches import Normalizer, pair_batches
from benchmark.metrics import classifier_for, evaluate
from benchmark.models import create_model, tokenizer_for
from benchmark.presets import Preset, split_attack_settings
from benchmark.progress import Reporter
from benchmark.runner.plan import attack_context, stage_recipe
from benchmark.seeding import derive_seed
from benchmark.stages import STAGES
from benchmark.storage import content_key
from benchmark.task import Task
from benchmark.training import train
from defenses.base import Defense, DefenseContext

VICTIM_ATTACK = "badnet"
_victims: dict[str, "Victim"] = {}


class TimeBudgetExceeded(Exception):
    """The defense ran longer than the check's time budget."""


@dataclasses.dataclass
class Victim:
    """A backdoored victim of the check's preset: its weights, the attack (for ASR) and what poisoning changed."""

    state: dict[str, torch.Tensor]
    attack: Attack
    manifest: PoisonManifest
    poisoned: Any  # the poisoned training pairs


def victim_for(preset: Preset, task: Task) -> Victim:
    """The BadNet victim of ``preset``, trained once per process (every defense checked is handed the same)."""
    key = content_key(config_dict(preset))
    if key not in _victims:
        _, settings = split_attack_settings(preset.attacks.get(VICTIM_ATTACK))
        context = attack_context(preset, task, SEED, torch.device("cpu"))
        attack = ATTACKS.get(VICTIM_ATTACK).from_settings(settings, context=context)
        count = max(1, round(0.05 * len(task.train_pairs)))
        poisoned, manifest = attack.poison(task.train_pairs, context.target, count,
                                           torch.Generator().manual_seed(derive_seed(SEED, "poison")))
        model = create_model(preset.model.name, seed=derive_seed(SEED, "init"))
        batches = pair_batches(poisoned, tokenizer_for(preset.model.name), Normalizer(model), preset.victim.batch_size,
                               torch.Generator().manual_seed(derive_seed(SEED, "victim-batches")), torch.device("cpu"))
        train(model, batches, preset.victim)
        _victims.clear()
        _victims[key] = Victim({k: v.detach().clone() for k, v in model.state_dict().items()}, attack, manifest,
                               poisoned)
    return _victims[key]


def check_defense(cls: type[Defense], preset: Preset, task: Task, time_budget: float) -> list[CheckResult]:
    """Every check of the defense ``cls`` on ``preset`` (its ``[defenses.NAME]`` settings) and its data."""
    name, settings = cls.name, preset.defenses.get(cls.name, {})
    frozen, toml = config_checks(cls, settings, f"defenses.{name}")
    results = [attempt(name, "metadata", lambda: metadata_check(cls, "defense")),
               attempt(name, "config-frozen", frozen), attempt(name, "config-toml", toml)]
    checked = _DefenseRuns(cls, settings, preset, task, victim_for(preset, task), time_budget)
    for check, body in (("runs-in-budget", checked.runs), ("scorable", checked.scorable),
                        ("deterministic", checked.deterministic), ("no-test-set-or-manifest", checked.isolated)):
        results.append(attempt(name, check, body))
    return results


class _DefenseRuns:
    """The defense run as the runner runs it (the first run kept for the checks that need one), and the checks."""

    def __init__(self, cls: type[Defense], settings: dict[str, Any], preset: Preset, task: Task, victim: Victim,
                 time_budget: float) -> None:
        self.cls, self.settings, self.preset, self.task, self.victim = cls, settings, preset, task, victim
        self.time_budget = time_budget
        self.tokenizer = tokenizer_for(preset.model.name)
        self.handed: dict[str, Any] = {}  # what the defense was given
        self.first: nn.Module | None = None

    def run(self, other_seed: int) -> nn.Module | torch.Tensor:
        """The defense's output as the runner would get it at its stage (:data:`benchmark.stages.STAGES`): a
        model, or a detector's scores."""
        stage = STAGES[self.cls.stage]
        if stage.starts_from == "initialisation":
            model = create_model(self.preset.model.name, seed=derive_seed(SEED, "init"))
        else:
            model = create_model(self.preset.model.name)
            model.load_state_dict(self.victim.state)
            model.eval()
        defense = self.cls.from_settings(self.settings)
        context = DefenseContext(torch.device("cpu"), derive_seed(SEED, "defense", self.cls.name),
                                 stage_recipe(stage, self.preset, defense.config), self.tokenizer, self.task.val_set,
                                 Reporter.silent())
        data = self.task.clean_pairs if stage.receives == "clean" else self.victim.poisoned
        self.handed.update(context=context, data=data, defense=defense)
        torch.manual_seed(context.seed)  # as the runner seeds it before every defense
        random.seed(other_seed)  # the runner seeds neither Python's nor NumPy's generator: drawing from them
        np.random.seed(other_seed)  # gives another model in every run
        start = time.perf_counter()
        with time_limit(self.time_budget):
            out = getattr(defense, stage.method)(model, data, context)
        if time.perf_counter() - start > self.time_budget:
            raise TimeBudgetExceeded(f"took {time.perf_counter() - start:.0f} s, over the budget of "
                                     f"{self.time_budget:g} s")
        wanted = torch.Tensor if stage.returns == "scores" else nn.Module
        if not isinstance(out, wanted):
            raise TypeError(f"{stage.method} returned {type(out).__name__}, not a {wanted.__module__}."
                            f"{wanted.__name__}")
        return out

    def runs(self) -> str | None:
        self.first = self.run(other_seed=21)
        return None

    def scorable(self) -> str | None:
        if self.first is None:
            return "not scored: the defense did not run (see runs-in-budget)"
        if isinstance(self.first, torch.Tensor):  # a detector's scores
            pairs = len(self.handed["data"])
            if self.first.shape != (pairs,):
                return f"scores of shape {tuple(self.first.shape)}; expected one per pair received, ({pairs},)"
            if not torch.isfinite(self.first).all():
                return "some scores are not finite (NaN or inf); every pair needs a finite score"
            return None
        test_set, cpu = self.task.test_set, torch.device("cpu")
        metrics = evaluate(classifier_for(self.first, self.tokenizer, test_set, cpu), test_set,
                           target=self.task.target_index, trigger=self.victim.attack.apply, seed=SEED, device=cpu)
        if not 0.0 <= metrics.ca.value <= 1.0 or metrics.ca.n != len(test_set):
            return f"the evaluator could not score the model: CA {metrics.ca.value} on {metrics.ca.n} images"
        return None

    def deterministic(self) -> str | None:
        if self.first is None:
            return "not compared: the defense did not run (see runs-in-budget)"
        second = self.run(other_seed=22)
        if isinstance(self.first, torch.Tensor):
            if not torch.equal(self.first, second):
                return ("two runs with the same seed gave different scores: draw randomness from context.seed "
                        "(torch.Generator().manual_seed(context.seed)), not from Python's or NumPy's global generator")
            return None
        a, b = self.first.state_dict(), second.state_dict()
        differ = sorted(k for k in a if k not in b or not torch.equal(a[k], b[k])) + sorted(set(b) - set(a))
        if differ:
            return (f"two runs with the same seed gave different weights ({len(differ)} tensors, e.g. {differ[0]}): "
                    "draw randomness from context.seed (torch.Generator().manual_seed(context.seed)), not from "
                    "Python's or NumPy's global generator")
        return None

    def isolated(self) -> str | None:
        if not self.handed:
            return "not inspected: the defense was never built"
        task, victim = self.task, self.victim
        forbidden = {id(task): "the task (with the test set)", id(task.test_set): "the test set",
                     id(task.train_pairs): "the victim's training pairs", id(victim.manifest): "the poison manifest"}
        if STAGES[self.cls.stage].receives == "clean":  # the other stages get the poisoned pairs, as the victim did
            forbidden[id(victim.poisoned)] = "the poisoned pairs"
        for path, obj in _reachable(self.handed):
            if id(obj) in forbidden or isinstance(obj, (PoisonManifest, Task)):
                return f"{path} is {forbidden.get(id(obj), type(obj).__name__)}: a defense must never receive it"
        return None


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (a timer signal, where one can be set: the main thread on POSIX)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeBudgetExceeded(f"still running after the budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reachable(roots: dict[str, Any], depth: int = 4, limit: int = 20_000) -> Iterator[tuple[str, Any]]:
    """Every object reachable from ``roots`` through attributes, dict values and sequence items, with its path
    (tensors and modules are leaves: they hold numbers, not references to other data)."""
    seen: set[int] = set()
    frontier = list(roots.items())
    for _ in range(depth + 1):
        following = []
        for path, obj in frontier:
            if id(obj) in seen or len(seen) >= limit:
                continue
            seen.add(id(obj))
            yield path, obj
            if isinstance(obj, (torch.Tensor, nn.Module, str, bytes, int, float, type)):
                continue
            if isinstance(obj, dict):
                following += [(f"{path}[{k!r}]", v) for k, v in obj.items()]
            elif isinstance(obj, (list, tuple, set)) and len(obj) <= 1000:
                following += [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
            following += [(f"{path}.{k}", v) for k, v in getattr(obj, "__dict__", {}).items()]
        frontier = following
