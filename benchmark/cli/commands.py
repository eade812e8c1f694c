"""The ``cleanbench`` commands ``run``, ``leaderboard`` and ``list``, and the app that holds every command (``attacks``
in :mod:`benchmark.cli.attacks`, ``validate`` in :mod:`benchmark.cli.validate`, ``new`` and ``check`` in
:mod:`benchmark.cli.new` and :mod:`benchmark.cli.check`). Commands stay thin; heavy imports happen inside them so
``--help`` is fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from benchmark.cli import scale
from benchmark.cli.attacks import attacks_app
from benchmark.cli.check import check_command
from benchmark.cli.new import new_command
from benchmark.cli.support import (QUICK_ATTACKS, QUICK_DEFENSES, DataDirOption, NoAutoloadOption, PluginOption,
                                   PoisonCountOption, PoisonRateOption, PresetOption, RunAttacksOption,
                                   RunDefensesOption, SeedsOption, SweepOption, register_plugins_and_warn,
                                   user_errors)
from benchmark.cli.submit import submit_command, verify_command
from benchmark.cli.validate import DataOption, validate_command
from benchmark.errors import UserError
from leaderboard import DEFAULT_MAX_CA_COST, DEFAULT_THRESHOLD

MaxCaCostOption = typer.Option(
    DEFAULT_MAX_CA_COST, help="Largest CA cost (absolute; against no defense on the same victims) a defense may have on the benign "
               "control and on every attacked victim to be ranked.")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Backdoor attacks and defenses for CLIP, benchmarked end to end.")

app.add_typer(attacks_app, name="attacks")
app.command("validate")(validate_command)
app.command("new")(new_command)
app.command("check")(check_command)
app.command("submit")(submit_command)
app.command("verify")(verify_command)

@app.command()
@user_errors
def run(
    attacks: Optional[str] = RunAttacksOption,
    defenses: Optional[str] = RunDefensesOption,
    seeds: str = SeedsOption,
    preset: str = PresetOption,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    out: Path = typer.Option(Path("results"), help="Output folder: results.csv, cache/, leaderboard."),
    poison_rate: Optional[float] = PoisonRateOption,
    poison_count: Optional[int] = PoisonCountOption,
    data_dir: Optional[Path] = DataDirOption,
    data: Optional[List[str]] = DataOption,
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
    precision: str = scale.PrecisionOption,
    compile_model: bool = scale.CompileOption,
    gpus: int = scale.GpusOption,
    executor: str = scale.ExecutorOption,
    workers: int = scale.WorkersOption,
    slurm_partition: str = scale.SlurmPartitionOption,
    slurm_timeout_min: int = scale.SlurmTimeOption,
    slurm_max_requeue: int = scale.SlurmRequeueOption,
    slurm_option: Optional[List[str]] = scale.SlurmExtraOption,
    max_ca_cost: float = MaxCaCostOption,
    sweep: Optional[List[str]] = SweepOption,
) -> None:
    """Run the grid: poison → train victim → defend → evaluate CA and ASR; one CSV row per cell. Without --attacks
    and --defenses, the quick suite (badnet against none, finetune and cleanclip)."""
    from benchmark.api import SlurmSettings, run_grid, write_report
    from benchmark.distributed import world

    if attacks is None or defenses is None:
        typer.echo(quick_suite_note(attacks, defenses), err=True)
        attacks = QUICK_ATTACKS if attacks is None else attacks
        defenses = QUICK_DEFENSES if defenses is None else defenses
    grid = run_grid(
        attacks, defenses, seeds, preset=preset, out=out, device=device, poison_rate=poison_rate,
        poison_count=poison_count, data_dir=data_dir, data=tuple(data or ()), plugins=tuple(plugin or ()),
        no_plugin_autoload=no_plugin_autoload, precision=precision, compile_model=compile_model, gpus=gpus,
        executor=executor, workers=workers, sweeps=tuple(sweep or ()),
        slurm=SlurmSettings(slurm_partition, slurm_timeout_min, slurm_max_requeue, tuple(slurm_option or ())),
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
        before_run=lambda: scale.relaunch_under_torchrun(gpus, executor))
    if world().is_main:  # every rank of a torchrun job ran the grid; one writes the page
        write_report(grid, max_ca_cost=max_ca_cost)
    if grid.summary.cells_failed:
        raise typer.Exit(1)


def quick_suite_note(attacks: Optional[str], defenses: Optional[str]) -> str:
    """The line ``run`` prints when --attacks or --defenses is left out: what it runs instead (the quick suite's
    choice), and how to run everything."""
    missing = [f"--{name} {value}" for name, given, value in [("attacks", attacks, QUICK_ATTACKS),
                                                              ("defenses", defenses, QUICK_DEFENSES)] if given is None]
    what = "the quick suite" if len(missing) == 2 else "the quick suite's choice"
    return (f"running {what}: {' '.join(missing)}; every attack against every defense is --attacks all --defenses "
            "all (hours on a few CPU cores: `cleanbench validate --attacks all --defenses all` estimates it)")


@app.command("leaderboard")
@user_errors
def leaderboard_command(
    results: Optional[List[Path]] = typer.Argument(
        None, help="Results CSVs, or run output folders holding results.csv (default: results/)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the first results file's folder)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="No-defense ASR below which an attack 'did not take' (not ranked)."),
    max_ca_cost: float = MaxCaCostOption,
    open_page: bool = typer.Option(False, "--open", help="Open index.html in the default browser."),
    serve: bool = typer.Option(False, "--serve", help="Serve the output folder on localhost until Ctrl-C."),
    port: int = typer.Option(8000, help="Port for --serve; 0 picks a free one."),
) -> None:
    """Aggregate results over seeds into leaderboard.csv, plots and a self-contained index.html."""
    from leaderboard.build import serve as serve_folder
    from leaderboard.build import write_leaderboard

    index = write_leaderboard(results or [Path("results")], out, threshold, max_ca_cost=max_ca_cost)
    typer.echo(f"leaderboard: {index}")
    if open_page:
        import webbrowser

        webbrowser.open(index.resolve().as_uri())
    if serve:
        serve_folder(index.parent, port)


@app.command("list")
@user_errors
def list_components(
    kind: str = typer.Argument(..., help="attacks, defenses, presets or stages"),
    names: Optional[str] = typer.Argument(None, help="Only these, comma-separated: names, wildcards and exclusions, "
                                                     "e.g. 'detect-*' or 'all,-badclip'."),
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """List the registered attacks, defenses or presets, with versions and where each comes from, or the defense
    stages and what each hands over."""
    from rich.console import Console
    from rich.markup import escape  # plugin docstrings and errors are text, not rich markup
    from rich.table import Table

    from benchmark.registry import select

    register_plugins_and_warn(plugin, no_plugin_autoload)
    table = Table(title=kind)
    if kind == "presets":
        from benchmark.presets import builtin_presets, load_preset

        for column in ("name", "description", "source"):
            table.add_column(column)
        presets = builtin_presets()
        for name in select(names, list(presets), "preset") if names else presets:
            table.add_row(name, load_preset(name).description, str(presets[name]))
    elif kind == "stages":
        from benchmark.stages import STAGES

        for column in ("name", "contract", "receives", "starts from", "returns", "recipe", "summary"):
            table.add_column(column)
        for name in select(names, list(STAGES), "stage") if names else STAGES:
            stage = STAGES[name]
            table.add_row(name, f"{stage.contract.partition(':')[2]}.{stage.method}()", f"{stage.receives} pairs",
                          stage.starts_from, stage.returns, stage.recipe, stage.summary)
    elif kind in ("attacks", "defenses"):
        from attacks import ATTACKS
        from benchmark.provenance import origin_of
        from defenses import DEFENSES

        registry = ATTACKS if kind == "attacks" else DEFENSES
        stages = registry is DEFENSES  # a defense's stage (``list stages`` says what each hands over)
        for column in ("name", "version", *(("stage",) if stages else ()), "source", "summary"):
            table.add_column(column)
        for name in select(names, registry.names(), registry.kind) if names else registry.names():
            try:
                cls = registry.get(name)
                summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                stage = (cls.stage,) if stages else ()
                table.add_row(*map(escape, (name, str(cls.version), *stage, origin_of(cls).label(), summary)))
            except Exception as error:  # noqa: BLE001 - a broken plugin is listed, not fatal
                failed = ("?",) * (1 + stages)
                table.add_row(*map(escape, (name, *failed, registry.source(name), f"failed to load: {error}")))
    else:
        raise UserError(f"cannot list {kind!r}; choose one of: attacks, defenses, presets, stages")
    Console(width=140).print(table)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
