"""``cleanbench validate``: check a run before it starts, and the ``--data`` option it shares with ``run``.

Kept out of :mod:`benchmark.cli` so that module stays a list of thin commands; the checks live in
:mod:`benchmark.validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from benchmark.cli_support import NoAutoloadOption, PluginOption, load_plugins, user_errors

DataOption = typer.Option(
    None, "--data", help="A data source override (repeatable): train=PATH, eval=PATH, or ROLE.KEY=VALUE, e.g. "
                         "train.format=webdataset. Paths may also come from the preset's ${ENV} variables.")


def load_with_data_dir(name: str, data_dir: Optional[Path]):
    """The preset ``name`` (built-in or a file) with ``--data-dir`` applied."""
    import dataclasses

    from benchmark.presets import load_preset

    preset = load_preset(name)
    if data_dir is not None:
        preset = dataclasses.replace(preset, data=dataclasses.replace(preset.data, data_dir=str(data_dir)))
    return preset


def preset_for_run(name: str, data_dir: Optional[Path], data: Optional[List[str]]):
    """The preset ``name`` with ``--data-dir`` and ``--data`` applied and its data sources resolved (paths
    expanded and checked, class names read from the evaluation set), as the runner needs it."""
    from benchmark.data.resolve import resolve_preset

    return resolve_preset(load_with_data_dir(name, data_dir), tuple(data or ()))


@user_errors
def validate_command(
    preset: str = typer.Option("fmnist-tiny", help="A built-in preset name or a path to a preset .toml file."),
    attacks: str = typer.Option("all", help="Comma-separated attack names, or 'all'."),
    defenses: str = typer.Option("all", help="Comma-separated defense names, or 'all'."),
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
    data: Optional[List[str]] = DataOption,
    data_dir: Optional[Path] = typer.Option(None, help="Directory with the dataset's files (e.g. Fashion-MNIST IDX)."),
    poison_rate: Optional[float] = typer.Option(None, help="Override every attack's poison rate, in (0, 1]."),
    poison_count: Optional[int] = typer.Option(None, help="Override every attack's poison count."),
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """Check names, configs, every data path and the target class; print the plan. Trains nothing, no GPU."""
    from benchmark.cli import _parse_seeds
    from benchmark.validate import validate

    load_plugins(plugin, no_plugin_autoload)
    chosen = load_with_data_dir(preset, data_dir)
    overrides = {key: value for key, value in (("poison_rate", poison_rate), ("poison_count", poison_count))
                 if value is not None}
    report = validate(chosen, attacks, defenses, _parse_seeds(seeds), overrides=tuple(data or ()),
                      attack_overrides=overrides)
    typer.echo(f"preset {chosen.name} ({chosen.source})")
    for line in report.lines:
        typer.echo(f"  {line}")
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    typer.echo("ok: everything checked; nothing was trained")
