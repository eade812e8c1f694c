"""``cleanbench check NAME|FILE``: the conformance suite (:mod:`benchmark.conformance`) on one attack or defense,
one line per check, exit 0 when all pass and 1 otherwise."""

from __future__ import annotations

from typing import Optional

import typer

from benchmark.cli.support import NoAutoloadOption, register_plugins_and_warn, user_errors

DEFAULT_TIME_BUDGET = 300.0  # benchmark.conformance.DEFAULT_TIME_BUDGET, not imported: --help stays torch-free


@user_errors
def check_command(
    component: str = typer.Argument(..., metavar="NAME|FILE",
                                    help="A registered attack or defense, a plugin file.py, or module:Class."),
    time_budget: float = typer.Option(DEFAULT_TIME_BUDGET, help="Seconds a defense may take on the test-sized preset."),
    preset: Optional[str] = typer.Option(
        None, help="Run the checks on this preset (name or .toml) instead of the default preset at test size."),
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """Check an attack or defense against the contract every built-in passes: config, determinism, inputs, budget."""
    from benchmark.api import preset_for_run
    from benchmark.conformance import check

    register_plugins_and_warn(None, no_plugin_autoload)  # broken installed plugins warn; a named one must load
    chosen = preset_for_run(preset, None, ()) if preset else None
    results = check(component, time_budget=time_budget, preset=chosen, no_autoload=no_plugin_autoload)
    for result in results:
        typer.echo(result.line())
    failed = sum(not result.ok for result in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)
