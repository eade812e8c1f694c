"""What the ``cleanbench`` commands share: the grid and plugin options (``run`` and ``validate`` take the same ones),
plugin loading with warnings, and one-line errors for user mistakes."""

from __future__ import annotations

import functools
from typing import Callable, List, Optional

import typer

from benchmark.errors import UserError

SELECTION_HELP = "names, wildcards and exclusions, e.g. 'detect-*' or 'all,-badclip'"
AttacksOption = typer.Option("all", help=f"Comma-separated attacks: {SELECTION_HELP}; 'none' for the benign "
                                         "control only.")
DefensesOption = typer.Option("all", help=f"Comma-separated defenses: {SELECTION_HELP}.")
SeedsOption = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2.")
# The quick suite: what `cleanbench run` (and so `make run`) runs without --attacks/--defenses; the paper's BadNet
# against no defense, finetuning and CleanCLIP, one seed (the seeds default is already "0").
QUICK_ATTACKS = "badnet"
QUICK_DEFENSES = "none,finetune,cleanclip"
RunAttacksOption = typer.Option(None, "--attacks", help=f"Comma-separated attacks: {SELECTION_HELP}; 'none' for "
                                f"the benign control only; 'all' for every one (default: {QUICK_ATTACKS}, the quick "
                                "suite).")
RunDefensesOption = typer.Option(None, "--defenses", help=f"Comma-separated defenses: {SELECTION_HELP}; 'all' for "
                                 f"every one (default: {QUICK_DEFENSES}, the quick suite).")
PresetOption = typer.Option("fmnist-tiny", help="A built-in preset name or a path to a preset .toml file.")
DataDirOption = typer.Option(None, help="Directory with the dataset's files (e.g. Fashion-MNIST IDX).")
PoisonRateOption = typer.Option(None, help="Override every attack's poison rate, in (0, 1].")
PoisonCountOption = typer.Option(None, help="Override every attack's poison count.")
PluginOption = typer.Option(None, "--plugin", help="A plugin: path/to/file.py or module:Class (repeatable).")
NoAutoloadOption = typer.Option(False, "--no-plugin-autoload",
                                help="Do not load plugins from installed packages (also: CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD=1).")
SweepOption = typer.Option(None, "--sweep", help="Sweep a preset setting (repeatable): KEY=V1,V2,... in the preset's "
                                                 "dotted form, e.g. defenses.cleanclip.inmodal_weight=0,1,2 or "
                                                 "attacks.badnet.poison_count=25,50,100.")


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


def register_plugins_and_warn(plugins: Optional[List[str]], no_autoload: bool) -> None:
    """Register the entry-point plugins (unless turned off) and the --plugin files; a warning on stderr for each
    installed plugin that failed to load (a named one that fails is a :class:`UserError`)."""
    from benchmark.plugins import register_plugins

    for failure in register_plugins(tuple(plugins or ()), no_autoload):
        typer.echo(f"warning: {failure.message()}", err=True)
