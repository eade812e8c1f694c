"""``cleanbench check NAME|FILE``: the conformance suite (:mod:`benchmark.conformance`) on one attack or defense,
one line per check, exit 0 when all pass and 1 otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benchmark.cli.support import NoAutoloadOption, register_plugins_and_warn, user_errors

DEFAULT_TIME_BUDGET = 300.0  # benchmark.conformance.DEFAULT_TIME_BUDGET, not imported: --help stays torch-free


@user_errors
def check_command(
    component: str = typer.Argument(..., metavar="NAME|FILE",
                                    help="A registered attack or defense (or a selection of them: 'detect-*', "
                                         "'all,-badclip'), a plugin file.py, or module:Class."),
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
    results = []
    for name in selected_components(component):
        results += check(name, time_budget=time_budget, preset=chosen, no_autoload=no_plugin_autoload)
    for result in results:
        typer.echo(result.line())
    failed = sum(not result.ok for result in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)


def selected_components(component: str) -> list[str]:
    """``component`` as the checks take it, one at a time: a plugin file or ``module:Class`` and a plain name as
    given; a selection (wildcards, commas, exclusions) as the attack and defense names it chooses."""
    if component.endswith(".py") or ":" in component or Path(component).is_file() \
            or not any(mark in component for mark in "*?[,") and not component.startswith("-"):
        return [component]
    from attacks import ATTACKS
    from benchmark.registry import select
    from defenses import DEFENSES

    return select(component, ATTACKS.names() + DEFENSES.names(), "attack or defense")
