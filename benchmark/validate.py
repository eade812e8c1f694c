"""``cleanbench validate``: check a whole run (names, configs, every data path, the target class, split sizes)
and describe what it would do, before any GPU is touched or anything is trained.

Problems are gathered, not stopped at: names and configs are checked even when a data path is missing, and every
missing path is listed, so one call tells a user everything to fix. Counting reads only what is cheap: CSV rows,
img2dataset's shard statistics (the shards' tar headers otherwise), folder listings, Arrow metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import UserError
from benchmark.presets import Preset, SourceSpec
from benchmark.results import BENIGN_ATTACK, REFERENCE_DEFENSE
from benchmark.runner.plan import Plan


@dataclass
class Report:
    """What ``validate`` found: the problems (each one line) and the description of the run."""

    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def count_items(spec: SourceSpec, role: str) -> int:
    """How many pairs or images a source holds, as cheaply as its format allows."""
    from benchmark.data.formats import open_source

    if spec.format == "webdataset":
        from benchmark.data.webdataset_pairs import count_pairs

        counted = count_pairs(spec.path)
        if counted is not None:
            return counted
    return len(open_source(spec, role))


def validate(preset: Preset, attacks: str, defenses: str, seeds: list[int], *,
             overrides: tuple[str, ...] = (), attack_overrides: dict[str, Any] | None = None,
             out: Path | None = None, workers: int = 0, sweeps: tuple[str, ...] = ()) -> Report:
    """Check everything a run of this grid needs; describe its data, cells, victims and optimizer steps, and
    estimate its time on this machine (:mod:`benchmark.runner.cost`; with ``out``, what that folder has not done
    yet, at the speed its victims trained; ``workers`` 0 as ``run`` chooses them on the CPU).

    ``attacks`` and ``defenses`` are the CLI's comma-separated lists ("all"; "none" for no attack); ``sweeps`` the
    ``--sweep`` options (:mod:`benchmark.sweeps`): every point is planned and checked, the first described, and
    the estimate covers them all, counting what points share once.
    """
    from attacks import ATTACKS
    from benchmark.data.resolve import resolve_preset
    from benchmark.runner import plan_grid
    from benchmark.sweeps import axes_of, sweep_points
    from defenses import DEFENSES

    report = Report()
    resolved = _attempt(report, lambda: resolve_preset(preset, overrides))

    def grid() -> list[Plan] | None:
        attack_names = [] if attacks.strip() == BENIGN_ATTACK else _attempt(report, lambda: ATTACKS.resolve(attacks))
        defense_names = _attempt(report, lambda: DEFENSES.resolve(defenses))
        if attack_names is None or defense_names is None:
            return None
        # Planned as resolved; with its data problems already reported, as given, so names are still checked.
        base = resolved or preset
        return [plan_grid(point.preset, attack_names, defense_names, seeds, attack_overrides=attack_overrides,
                          resolve=False, sweep=point.values)
                for point in sweep_points(base, axes_of(base, sweeps))]

    plans = _attempt(report, grid)
    if resolved is not None:
        report.lines += _attempt(report, lambda: _describe_data(resolved)) or []
    if plans:
        report.lines += _describe_grid(plans[0])
        if plans[0].sweep:
            victims = {spec.key for plan in plans for spec in plan.victims}
            victims |= {cell.trained_key for plan in plans for cell in plan.cells
                        if cell.trains_model(plan.preset.data.train_pairs)}
            cells = {cell.key for plan in plans for cell in plan.cells}
            keys = ", ".join(key for key, _ in plans[0].sweep)
            report.lines.append(f"sweep over {keys}: {len(plans)} points (the first described above); "
                                f"{len(victims)} distinct victims and {len(cells)} distinct cells in all, each "
                                f"shared by the points it is the same for; {sum(len(p.cells) for p in plans)} rows")
        if resolved is not None:
            report.lines += _attempt(report, lambda: [_estimate(plans, out, workers)]) or []
    return report


def _estimate(plans: list[Plan], out: Path | None, workers: int) -> str:
    from benchmark.runner.executors import MAX_CPU_WORKERS, cpu_cores

    workers = workers or min(cpu_cores(), MAX_CPU_WORKERS)
    counted: set[str] = set()
    costs = [_cost(plan, out, workers, counted) for plan in plans]
    return sum(costs[1:], costs[0]).describe()


def _cost(plan: Plan, out: Path | None, workers: int, counted: set[str]):
    from benchmark.runner.cost import grid_cost
    from benchmark.runner.executors import cpu_cores

    data = plan.preset.data
    if data.test_images:
        test_images = data.test_images
    elif not data.uses_sources:
        from benchmark.task import build_task

        test_images = len(build_task(plan.preset).test_set)
    else:
        from benchmark.data.source_splits import plan_splits

        test_images = plan_splits(data, count_items(data.train, "train"), count_items(data.eval, "eval")).test_images
    return grid_cost(plan, out, workers, test_images, threads=max(1, cpu_cores() // workers), counted=counted)


def _attempt(report: Report, check):
    try:
        return check()
    except UserError as error:
        report.problems.append(str(error))
        return None


def _describe_data(preset: Preset) -> list[str]:
    data, text = preset.data, preset.text
    if not data.uses_sources:
        from benchmark.task import build_task

        task = build_task(preset)  # the built-in set is small: load and split it for real
        pretrain = f", {len(task.pretrain_pairs)} pretraining" if task.pretrain_pairs is not None else ""
        return [f"data: {data.dataset}: {len(task.train_pairs)} victim-training pairs, {len(task.clean_pairs)} clean"
                f"{pretrain}, {len(task.val_set)} validation, {len(task.test_set)} test images (in memory)",
                f"target: {text.target} (class {preset.target_index} of {len(text.classnames)})"]
    from benchmark.data.source_splits import plan_splits

    pairs, images = count_items(data.train, "train"), count_items(data.eval, "eval")
    split = plan_splits(data, pairs, images)

    def where(name: str) -> str:
        return "streamed" if name in split.streamed else "in memory"

    return [
        f"data.train: {data.train.format} {data.train.path}: {pairs:,} pairs → {split.train_pairs:,} victim-training "
        f"({where('train')}), {split.clean_pairs:,} clean ({where('clean')})",
        f"data.eval: {data.eval.format} {data.eval.path}: {images:,} images → {split.val_images:,} validation, "
        f"{split.test_images:,} test (in memory)",
        f"images: {data.image_size} px; up to {data.max_bad_images} unreadable images skipped; {data.workers} workers",
        f"target: {text.target} (class {preset.target_index} of {len(text.classnames)}); "
        f"{len(text.eval_templates)} zero-shot templates",
    ]


def _describe_grid(plan: Plan) -> list[str]:
    from benchmark.stages import STAGES
    from defenses import DEFENSES

    preset = plan.preset
    victim_steps = preset.data.train_pairs // preset.victim.batch_size * preset.victim.epochs
    attacks = sorted({v.attack for v in plan.victims})
    seeds = sorted({v.seed for v in plan.victims})
    defenses = list(dict.fromkeys(cell.defense for cell in plan.cells))
    stage_victims = sum(cell.trains_model(preset.data.train_pairs) for cell in plan.cells)
    start, pretraining, pretrain_steps = _victim_start(preset)
    lines = [
        f"model: {preset.model.name} ({start})",
        f"grid: {len(plan.cells)} cells = {len(attacks)} attacks (incl. the benign control 'none') × "
        f"{len(defenses)} defenses × {len(seeds)} seeds; {len(plan.victims) + stage_victims} victims to train"
        + (f" ({stage_victims} of them by training- and data-stage defenses, one per attack and seed)"
           if stage_victims else ""),
        f"victim training: {preset.data.train_pairs:,} pairs / batch {preset.victim.batch_size} × "
        f"{preset.victim.epochs} epochs = {victim_steps:,} steps per victim, "
        f"{victim_steps * len(plan.victims):,} in all; objective {preset.victim.label}"
        + (" (two views of every pair per step: about twice a clip step)" if preset.victim.objective != "clip" else ""),
    ]
    lines += pretraining
    defense_steps = 0
    for name in defenses:
        if name == REFERENCE_DEFENSE:
            continue
        cls = DEFENSES.get(name)
        cells = sum(1 for cell in plan.cells if cell.defense == name)
        line, steps = STAGES[cls.stage].runner().describe(preset, name, cls.from_settings(preset.defenses.get(name, {})),
                                                          cells)
        lines.append(line)
        defense_steps += steps * cells
    pretraining = f"pretraining {pretrain_steps:,}, " if pretrain_steps else ""
    lines.append(f"estimated optimizer steps: {pretrain_steps + victim_steps * len(plan.victims) + defense_steps:,} "
                 f"({pretraining}victims {victim_steps * len(plan.victims):,}, defenses {defense_steps:,})")
    return lines


def _victim_start(preset: Preset) -> tuple[str, list[str], int]:
    """How the victims start (for the model line), the line describing the clean model's pretraining if the run
    trains one, and that pretraining's optimizer steps."""
    weights, pretrain = preset.model.pretrained, preset.pretrain
    if preset.trains_clean_model:
        steps = pretrain.pairs // pretrain.batch_size * pretrain.epochs
        return (f"pretrained here on {pretrain.pairs:,} disjoint clean pairs, then finetuned on the poisoned pairs",
                [f"pretraining: {pretrain.pairs:,} clean pairs / batch {pretrain.batch_size} × {pretrain.epochs} "
                 f"epochs = {steps:,} steps, once per run before any victim (one clean model shared by every victim; "
                 "skipped when the cache holds it)"], steps)
    if weights:
        return f"from {weights}, finetuned on the poisoned pairs", [], 0  # a scratch victim has no weights
    return "random init, trained from scratch", [], 0
