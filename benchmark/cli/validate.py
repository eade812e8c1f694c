"""``cleanbench validate``: check a run before it starts, and the ``--data`` option it shares with ``run``.

Kept out of :mod:`benchmark.cli.commands` so that module stays a list of thin commands; the checks live in
:mod:`benchmark.validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from benchmark.api import attack_overrides, load_with_data_dir, parse_seeds
from benchmark.cli.support import (AttacksOption, DataDirOption, DefensesOption, NoAutoloadOption, PluginOption,
                                   PoisonCountOption, PoisonRateOption, PresetOption, SeedsOption, SweepOption,
                                   register_plugins_and_warn,
                                   user_errors)

DataOption = typer.Option(
    None, "--data", help="A data source override (repeatable): train=PATH, eval=PATH, or ROLE.KEY=VALUE, e.g. "
                         "train.format=webdataset. Paths may also come from the preset's ${ENV} variables.")


@user_errors
def validate_command(
    preset: str = PresetOption,
    attacks: str = AttacksOption,
    defenses: str = DefensesOption,
    seeds: str = SeedsOption,
    data: Optional[List[str]] = DataOption,
    data_dir: Optional[Path] = DataDirOption,
    poison_rate: Optional[float] = PoisonRateOption,
    poison_count: Optional[int] = PoisonCountOption,
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
    out: Optional[Path] = typer.Option(None, help="The run's output folder: the time estimate then leaves out what "
                                                  "it already holds and uses the speed its victims trained at."),
    workers: int = typer.Option(0, help="Workers the run will use (0: as `run` chooses them on the CPU)."),
    sweep: Optional[List[str]] = SweepOption,
) -> None:
    """Check names, configs, every data path and the target class; print the plan. Trains nothing, no GPU."""
    from benchmark.validate import validate

    register_plugins_and_warn(plugin, no_plugin_autoload)
    chosen = load_with_data_dir(preset, data_dir)
    report = validate(chosen, attacks, defenses, parse_seeds(seeds), overrides=tuple(data or ()),
                      attack_overrides=attack_overrides(poison_rate, poison_count), out=out, workers=workers,
                      sweeps=tuple(sweep or ()))
    typer.echo(f"preset {chosen.name} ({chosen.source})")
    for line in report.lines:
        typer.echo(f"  {line}")
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    typer.echo("ok: everything checked; nothing was trained")
