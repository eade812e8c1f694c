"""Running a grid from Python: :func:`run_grid` does all that ``cleanbench run`` does but write the report, and
the command only wraps it (as lm-evaluation-harness's CLI wraps ``simple_evaluate``: the library call returns
results, the command saves the page). Tests and notebooks call it directly::

    from benchmark.api import run_grid, write_report

    grid = run_grid(["badnet"], ["none", "finetune"], [0], preset="fmnist-tiny", out="results", workers=1)
    grid.summary.cells_failed, grid.results  # what ran, and the path of results.csv
    write_report(grid)  # the trigger gallery and the leaderboard (index.html), as `cleanbench run` writes them

Attacks and defenses may be given as classes as well as names, e.g. a defense written in the notebook itself (it
is registered under its ``name``; ``workers=1`` as worker processes cannot import a class from a notebook)::

    from dataclasses import dataclass
    from defenses.base import Defense

    @dataclass(frozen=True)
    class IdentityConfig:
        pass

    class Identity(Defense):  # returns the model unchanged
        name, version, Config, uses_recipe = "identity", "1", IdentityConfig, False

        def apply(self, model, clean_data, context):
            return model

    run_grid(["badnet"], [Identity, "cleanclip"], [0], workers=1)

Bad input raises :class:`~benchmark.errors.UserError` before anything is trained or written. Heavy imports
happen inside the call, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from benchmark.results import BENIGN_ATTACK, GALLERY_FILE, RESULTS_FILE
from leaderboard import DEFAULT_MAX_CA_COST

if TYPE_CHECKING:
    from attacks.base import Attack
    from benchmark.presets import Preset
    from benchmark.registry import Registry
    from benchmark.runner.plan import Plan
    from benchmark.runner.record import RunSummary
    from defenses.base import Defense

    AttackChoice = Union[str, type[Attack]]
    DefenseChoice = Union[str, type[Defense]]

DEFAULT_PRESET = "fmnist-tiny"


@dataclass(frozen=True)
class SlurmSettings:
    """How ``executor="slurm"`` submits its jobs (``--slurm-*`` on the command line)."""

    partition: str = ""
    timeout_min: int = 240
    max_requeue: int = 3
    options: tuple[str, ...] = ()  # further sbatch options, "KEY=VALUE"


@dataclass
class GridRun:
    """What :func:`run_grid` did: the plan it ran (the first sweep point's, with a sweep), the run's summary, and
    where the results are; :func:`write_report` turns it into the gallery and the leaderboard."""

    plan: Plan
    summary: RunSummary
    out: Path
    plans: list[Plan] = dataclasses.field(default_factory=list)  # one per sweep point (``plan`` is the first)
    preset: Preset | None = None  # the preset run (before any sweep point's settings); None: ``plan.preset``

    @property
    def results(self) -> Path:
        return self.out / RESULTS_FILE

    @property
    def attacks(self) -> list[str]:
        """The attacks run, in the order given (the benign control left out)."""
        return list(dict.fromkeys(victim.attack for victim in self.plan.victims if victim.attack != BENIGN_ATTACK))


def run_grid(attacks: str | Sequence[AttackChoice] = "all", defenses: str | Sequence[DefenseChoice] = "all",
             seeds: str | Sequence[int] = (0,), *, preset: str = DEFAULT_PRESET, out: str | Path = "results",
             device: str = "auto", poison_rate: float | None = None, poison_count: int | None = None,
             data_dir: str | Path | None = None, data: Sequence[str] = (), plugins: Sequence[str] = (),
             no_plugin_autoload: bool = False, precision: str = "auto", compile_model: bool = False, gpus: int = 1,
             executor: str = "local", workers: int = 0, slurm: SlurmSettings = SlurmSettings(),
             sweeps: Sequence[str] = (), warn: Callable[[str], None] | None = None,
             before_run: Callable[[], None] | None = None, reporter: Any = None) -> GridRun:
    """Run ``preset × (attacks + benign control) × defenses × seeds`` into ``out``: results.csv and the cache; the
    report (trigger gallery and leaderboard) is :func:`write_report`'s, which ``cleanbench run`` calls after this.

    The arguments are ``cleanbench run``'s options: ``attacks`` and ``defenses`` as a comma-separated string
    (``"all"``; ``attacks="none"`` runs the benign control only) or a list whose items are names or classes (an
    :class:`~attacks.base.Attack` or :class:`~defenses.base.Defense` subclass: registered under its ``name`` if
    it is not yet, then run by name, e.g. ``run_grid([MyAttack], [MyDefense, "cleanclip"])``; worker processes
    import a class from its module, so one defined in ``__main__`` or inside a function needs ``workers=1``),
    ``seeds`` as integers or ``"0,1,2"``, ``sweeps`` as ``"KEY=V1,V2"`` (added to the preset's ``[sweep]``; every
    point is planned and checked first, then run in turn, :mod:`benchmark.sweeps`). ``warn`` receives each plugin
    that failed to load (default: :func:`warnings.warn`); ``before_run`` is called once everything is checked,
    before anything is written (the CLI relaunches itself under torchrun there); ``reporter`` (a
    :class:`benchmark.progress.Reporter`) draws the progress and its lines, by default bars on a terminal and
    timestamped lines on stderr.
    """
    from attacks import ATTACKS
    from benchmark import distributed
    from benchmark.device import Runtime, resolve_device, set_runtime
    from benchmark import plugins as plugin_loader
    from benchmark.progress import Reporter
    from benchmark.config import config_dict
    from benchmark.runner import plan_grid, run_plan
    from benchmark.runner.record import RunSummary
    from benchmark.storage import check_output_folder
    from benchmark.sweeps import axes_of, sweep_points
    from benchmark.task import build_task, pretrain_pair_count
    from defenses import DEFENSES

    for failure in plugin_loader.register_plugins(plugins, no_plugin_autoload):
        (warn or _warn)(failure.message())
    chosen_preset = preset_for_run(preset, data_dir, data)  # data paths expanded and checked, class names filled
    given = [*_classes(attacks), *_classes(defenses)]
    attack_spec = _names(attacks, ATTACKS)
    attack_names = [] if attack_spec.strip() == BENIGN_ATTACK else ATTACKS.resolve(attack_spec)
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
    defense_names = DEFENSES.resolve(_names(defenses, DEFENSES))
    plans = [plan_grid(point.preset, attack_names, defense_names, seed_list, sweep=point.values,
                       attack_overrides=attack_overrides(poison_rate, poison_count))
             for point in sweep_points(chosen_preset, axes_of(chosen_preset, sweeps))]
    torch_device = resolve_device(device)
    set_runtime(Runtime(precision, compile_model))  # type: ignore[arg-type]  # checked by Runtime
    check_output_folder(Path(out))  # a folder that cannot be written is reported before anything runs
    splits = {json.dumps([config_dict(plan.preset.data), pretrain_pair_count(plan.preset)], sort_keys=True):
              plan.preset for plan in plans}
    for data in splits.values():
        build_task(data)  # find and split the data now: a missing dataset is reported before anything runs
    if before_run is not None:
        before_run()
    torch_device = distributed.init_from_env(torch_device)
    main = distributed.world().is_main
    reporter = reporter if reporter is not None else Reporter(quiet=not main)
    out = Path(out)
    worker_plugins = tuple(dict.fromkeys([*plugins, *filter(None, map(_import_spec, given))]))
    grid_executor = build_executor(executor, workers=workers, gpus=gpus, device=torch_device, device_name=device,
                                   out=out, plugins=worker_plugins, no_plugin_autoload=no_plugin_autoload, slurm=slurm)
    _check_classes_reach_workers(given, grid_executor)
    summary = RunSummary()
    for plan in plans:  # each logs its plan once the output folder is checked and locked
        summary.merge(run_plan(plan, out, torch_device, reporter, executor=grid_executor))
    run = GridRun(plans[0], summary, out, plans=plans, preset=chosen_preset)
    if main:
        clean = f"{summary.pretrained_trained} clean model pretrained, " if summary.pretrained_trained else ""
        reporter.log(f"done: {clean}{summary.victims_trained} victims trained, {summary.victims_loaded} reused; "
                     f"{summary.cells_run} cells run, {summary.cells_skipped + summary.cells_reused} reused, "
                     f"{summary.cells_failed} failed")
    return run


def write_report(run: GridRun, *, max_ca_cost: float = DEFAULT_MAX_CA_COST,
                 log: Callable[[str], None] | None = None) -> Path | None:
    """Write what ``cleanbench run`` leaves beside the results of ``run``: the trigger gallery (what each trigger
    looks like, embedded in the page) and the leaderboard (``leaderboard.csv``, plots and ``index.html``, ranking
    defenses whose CA cost is at most ``max_ca_cost``). Returns the page's path (None when no row was written);
    ``log`` receives one line per step (default: the run's timestamped lines on stderr). Under torchrun, call it on
    the main rank only."""
    from benchmark.gallery import draw_gallery
    from benchmark.progress import Reporter
    from benchmark.runner.store import ArtifactStore
    from leaderboard.build import write_leaderboard

    say = log or Reporter().log
    attack_names = run.attacks
    if attack_names:
        try:  # with the run's cache, an optimised trigger is drawn as the run made it, not made again
            draw_gallery(run.preset or run.plan.preset, attack_names, run.out / GALLERY_FILE,
                         cache_dir=ArtifactStore.of_run(run.out).attacks_dir)
        except Exception as error:  # noqa: BLE001 - a plugin trigger that raises has failed its cells already
            say(f"trigger gallery not drawn: {type(error).__name__}: {error}".splitlines()[0])
    if not run.results.exists():
        return None
    page = write_leaderboard([run.results], run.out, max_ca_cost=max_ca_cost)
    say(f"leaderboard: {page}")
    return page


def _names(choices: str | Sequence[str | type], registry: Registry) -> str:
    """``choices`` as the comma-separated names the registry resolves; a class is registered under its ``name``
    first (the registry refuses one that is not its kind's contract; registering the class already there under
    that name again is harmless)."""
    if isinstance(choices, str):
        return choices
    names = []
    for choice in choices:
        if isinstance(choice, type):
            registry.register()(choice)
            names.append(choice.name)
        else:
            names.append(choice)
    return ",".join(names)


def _classes(choices: str | Sequence[str | type]) -> list[type]:
    return [] if isinstance(choices, str) else [choice for choice in choices if isinstance(choice, type)]


def _import_spec(cls: type) -> str:
    """The plugin spec by which a fresh worker process loads ``cls``: ``module:Class``, or the file of a class
    loaded from a plugin file; "" for a class it cannot import (defined in ``__main__`` or inside a function)."""
    import sys

    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return ""
    if cls.__module__.startswith("cleanbench_plugin_"):  # benchmark.plugins loads a plugin file under this name
        return str(getattr(sys.modules.get(cls.__module__), "__file__", "") or "")
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_classes_reach_workers(classes: list[type], executor: object) -> None:
    """Refuse, before anything runs, a class given to ``run_grid`` that worker processes could not import."""
    from benchmark.errors import UserError
    from benchmark.runner.executors import InProcess

    stranded = [cls for cls in classes if not _import_spec(cls)]
    if stranded and not isinstance(executor, InProcess):
        raise UserError(f"{stranded[0].__qualname__} is defined in __main__ or inside a function, so worker processes "
                        "cannot import it: pass workers=1 (this process runs every cell) or define it in a module")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def load_with_data_dir(name: str, data_dir: str | Path | None):
    """The preset ``name`` (built-in or a file) with ``data_dir`` (``--data-dir``) applied."""
    from benchmark.presets import load_preset

    preset = load_preset(name)
    if data_dir is not None:
        preset = dataclasses.replace(preset, data=dataclasses.replace(preset.data, data_dir=str(data_dir)))
    return preset


def preset_for_run(name: str, data_dir: str | Path | None, data: Sequence[str] | None):
    """The preset ``name`` with ``data_dir`` and the ``--data`` overrides applied and its data sources resolved
    (paths expanded and checked, class names read from the evaluation set), as the runner needs it."""
    from benchmark.data.resolve import resolve_preset

    return resolve_preset(load_with_data_dir(name, data_dir), tuple(data or ()))


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` (``--seeds``) as distinct non-negative integers, in the order given."""
    from benchmark.errors import UserError

    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if any(seed < 0 for seed in seeds):
        raise UserError(f"--seeds {text!r}: seeds must be ≥ 0")
    return list(dict.fromkeys(seeds))


def attack_overrides(poison_rate: float | None, poison_count: int | None) -> dict[str, Any]:
    """``poison_rate`` / ``poison_count``, where given, as settings that apply to every attack."""
    return {key: value for key, value in (("poison_rate", poison_rate), ("poison_count", poison_count))
            if value is not None}


def build_executor(name: str, *, workers: int, gpus: int, device, device_name: str, out: Path,
                   plugins: Sequence[str], no_plugin_autoload: bool, slurm: SlurmSettings):
    """The executor ``name`` ("local" or "slurm"); under torchrun always this process (every rank runs the same
    cells)."""
    from benchmark.distributed import world
    from benchmark.errors import UserError
    from benchmark.runner.executors import InProcess, SlurmOptions, WorkerSetup, make_executor

    if world().distributed:
        return InProcess()
    pairs = []
    for item in slurm.options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-option {item!r}: give KEY=VALUE, e.g. account=abc")
        pairs.append((key.strip(), value.strip()))
    options = SlurmOptions(partition=slurm.partition, timeout_min=slurm.timeout_min, gpus_per_job=gpus,
                           max_requeue=slurm.max_requeue, extra=tuple(pairs))
    setup = WorkerSetup(tuple(plugins or ()), no_plugin_autoload)
    return make_executor(name, workers=workers, device=device, device_name=device_name, out_dir=out, slurm=options,
                         setup=setup)
