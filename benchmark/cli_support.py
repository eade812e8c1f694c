"""What every ``cleanbench`` command shares: plugin options and loading, and one-line errors for user mistakes."""

from __future__ import annotations

import functools
from typing import Callable, List, Optional

import typer

from benchmark.errors import UserError

PluginOption = typer.Option(None, "--plugin", help="A plugin: path/to/file.py or module:Class (repeatable).")
NoAutoloadOption = typer.Option(False, "--no-plugin-autoload",
                                help="Do not load plugins from installed packages (also: CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD=1).")


def user_errors(command: Callable) -> Callable:
    """Turn a :class:`UserError` into one line on stderr and exit code 2: no traceback for user mistakes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def load_plugins(plugins: Optional[List[str]], no_autoload: bool) -> None:
    """Load entry-point plugins (unless turned off) and the --plugin files; warn about each one that failed."""
    from benchmark import plugins as plugin_loader

    failures = [] if no_autoload else plugin_loader.load_entry_points()
    for spec in plugins or []:
        failures += plugin_loader.load_plugin(spec)
    for failure in failures:
        typer.echo(f"warning: {failure.message()}", err=True)
