"""``cleanbench new attack|defense NAME``: write a plugin package that installs and passes its own test
(:mod:`benchmark.scaffold`)."""

from __future__ import annotations

from pathlib import Path

import typer

from benchmark.cli.support import user_errors


@user_errors
def new_command(
    kind: str = typer.Argument(..., metavar="attack|defense", help="What the plugin adds."),
    name: str = typer.Argument(..., help="Its name, e.g. my-defense (the module is my_defense)."),
    folder: Path = typer.Option(Path("."), "--dir", "-o", help="Where to create the package folder NAME/."),
) -> None:
    """Write a plugin package: pyproject.toml with the entry point, the module, a README and a test."""
    from benchmark.scaffold import new_plugin

    created = new_plugin(kind, name, folder)
    typer.echo(f"created {created}: next, pip install -e {created} && cleanbench check {name}")
