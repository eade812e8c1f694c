"""The ``cleanbench`` command line. Commands stay thin; heavy imports happen inside them so ``--help`` is fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from benchmark import cli_scale
from benchmark.cli_attacks import attacks_app
from benchmark.cli_support import (AttacksOption, DataDirOption, DefensesOption, NoAutoloadOption, PluginOption,
                                   PoisonCountOption, PoisonRateOption, PresetOption, SeedsOption, attack_overrides,
                                   load_plugins, parse_seeds, user_errors)
from benchmark.cli_validate import DataOption, preset_for_run, validate_command
from benchmark.errors import UserError
from benchmark.results import BENIGN_ATTACK, GALLERY_FILE, RESULTS_FILE
from leaderboard import DEFAULT_MAX_CA_COST, DEFAULT_THRESHOLD

MaxCaCostOption = typer.Option(
    DEFAULT_MAX_CA_COST, help="Largest CA cost (absolute; against no defense on the same victims) a defense may have on the benign "
               "control and on every attacked victim to be ranked.")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Backdoor attacks and defenses for CLIP, benchmarked end to end.")

app.add_typer(attacks_app, name="attacks")
app.command("validate")(validate_command)

@app.command()
@user_errors
def run(
    attacks: str = AttacksOption,
    defenses: str = DefensesOption,
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
    precision: str = cli_scale.PrecisionOption,
    compile_model: bool = cli_scale.CompileOption,
    gpus: int = cli_scale.GpusOption,
    executor: str = cli_scale.ExecutorOption,
    workers: int = cli_scale.WorkersOption,
    slurm_partition: str = cli_scale.SlurmPartitionOption,
    slurm_timeout_min: int = cli_scale.SlurmTimeOption,
    slurm_max_requeue: int = cli_scale.SlurmRequeueOption,
    slurm_option: Optional[List[str]] = cli_scale.SlurmExtraOption,
    max_ca_cost: float = MaxCaCostOption,
) -> None:
    """Run the grid: poison → train victim → defend → evaluate CA and ASR; one CSV row per cell."""
    from attacks import ATTACKS
    from benchmark import distributed
    from benchmark.device import Runtime, resolve_device, set_runtime
    from benchmark.progress import Reporter
    from benchmark.runner import plan_grid, run_plan
    from benchmark.task import build_task
    from defenses import DEFENSES
    from benchmark.gallery import draw_gallery
    from leaderboard.build import write_leaderboard

    load_plugins(plugin, no_plugin_autoload)
    chosen_preset = preset_for_run(preset, data_dir, data)  # data paths expanded and checked, class names filled
    attack_names = [] if attacks.strip() == BENIGN_ATTACK else ATTACKS.resolve(attacks)
    plan = plan_grid(chosen_preset, attack_names, DEFENSES.resolve(defenses), parse_seeds(seeds),
                     attack_overrides=attack_overrides(poison_rate, poison_count))
    torch_device = resolve_device(device)
    set_runtime(Runtime(precision, compile_model))  # type: ignore[arg-type]  # checked by Runtime
    build_task(chosen_preset)  # find and split the data now: a missing dataset is reported before anything runs
    cli_scale.relaunch_under_torchrun(gpus, executor)
    torch_device = distributed.init_from_env(torch_device)
    main = distributed.world().is_main
    reporter = Reporter(quiet=not main)
    grid_executor = cli_scale.build_executor(
        executor, workers=workers, gpus=gpus, device=torch_device, device_name=device, out=out, plugins=plugin,
        no_plugin_autoload=no_plugin_autoload, partition=slurm_partition, timeout_min=slurm_timeout_min,
        max_requeue=slurm_max_requeue, extra=slurm_option)
    # logs the plan once the output folder is checked and locked
    summary = run_plan(plan, out, torch_device, reporter, executor=grid_executor)
    if not main:
        return
    reporter.log(f"done: {summary.victims_trained} victims trained, {summary.victims_loaded} reused; "
                 f"{summary.cells_run} cells run, {summary.cells_skipped + summary.cells_reused} reused, "
                 f"{summary.cells_failed} failed")
    if attack_names:  # the leaderboard page embeds what each trigger looks like
        try:
            draw_gallery(chosen_preset, attack_names, out / GALLERY_FILE)
        except Exception as error:  # noqa: BLE001 - a plugin trigger that raises has failed its cells already
            reporter.log(f"trigger gallery not drawn: {type(error).__name__}: {error}".splitlines()[0])
    if (out / RESULTS_FILE).exists():
        reporter.log(f"leaderboard: {write_leaderboard([out / RESULTS_FILE], out, max_ca_cost=max_ca_cost)}")
    if summary.cells_failed:
        raise typer.Exit(1)


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
    kind: str = typer.Argument(..., help="attacks, defenses or presets"),
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """List the registered attacks, defenses or presets, with versions and where each comes from."""
    from rich.console import Console
    from rich.markup import escape  # plugin docstrings and errors are text, not rich markup
    from rich.table import Table

    load_plugins(plugin, no_plugin_autoload)
    table = Table(title=kind)
    if kind == "presets":
        from benchmark.presets import builtin_presets, load_preset

        for column in ("name", "description", "source"):
            table.add_column(column)
        for name, path in builtin_presets().items():
            table.add_row(name, load_preset(name).description, str(path))
    elif kind in ("attacks", "defenses"):
        from attacks import ATTACKS
        from defenses import DEFENSES

        registry = ATTACKS if kind == "attacks" else DEFENSES
        for column in ("name", "version", "source", "summary"):
            table.add_column(column)
        for name in registry.names():
            try:
                cls = registry.get(name)
                summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                table.add_row(*map(escape, (name, str(cls.version), registry.source(name), summary)))
            except Exception as error:  # noqa: BLE001 - a broken plugin is listed, not fatal
                table.add_row(*map(escape, (name, "?", registry.source(name), f"failed to load: {error}")))
    else:
        raise UserError(f"cannot list {kind!r}; choose one of: attacks, defenses, presets")
    Console(width=140).print(table)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
