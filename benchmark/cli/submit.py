"""The ``cleanbench submit`` and ``cleanbench verify`` commands: a defense's results as a bundle, and a rerun that
checks one (:mod:`benchmark.submit`, :mod:`benchmark.verify`, format in :mod:`benchmark.bundle`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from benchmark.cli.support import NoAutoloadOption, PluginOption, register_plugins_and_warn, user_errors


@user_errors
def submit_command(
    out: Path = typer.Argument(..., help="The run's output folder (holding results.csv and cache/)."),
    defense: str = typer.Option(..., help="The defense to submit."),
    output: Path = typer.Option(..., "-o", "--output", help="The bundle to write (a .zip file)."),
    preset: Optional[str] = typer.Option(None, help="The preset the run used (default: the rows' built-in preset)."),
    data_dir: Optional[str] = typer.Option(None, help="The --data-dir the run used, if any."),
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """Bundle a defense's rows, predictions, source, preset and environment into one file others can verify."""
    from benchmark.submit import submit

    register_plugins_and_warn(plugin, no_plugin_autoload)
    digest = submit(out, defense, output, preset=preset, data_dir=data_dir)
    typer.echo(f"bundle: {output} (sha256 {digest}); check it with: cleanbench verify {output}")


@user_errors
def verify_command(
    bundle: Path = typer.Argument(..., help="A bundle written by cleanbench submit."),
    cells: Optional[str] = typer.Option(
        None, help="Cells of the defense to rerun: ATTACK:SEED,... or 'all' (default: the lowest seed of each "
                   "attack)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (CPU reruns compare bitwise)."),
    data_dir: Optional[str] = typer.Option(None, help="Directory with the dataset's files, if not the bundle's."),
    tolerance: float = typer.Option(0.02, help="Largest absolute CA/ASR difference accepted where a bitwise "
                                               "comparison is not possible (another device or thread count)."),
    record: bool = typer.Option(True, help="Write BUNDLE.verification.json beside the bundle (the leaderboard "
                                           "reads it)."),
) -> None:
    """Check a bundle's hashes, rerun chosen cells (this runs the plugin's code) and compare their metrics."""
    from benchmark.verify import verify_bundle

    result = verify_bundle(bundle, cells=cells, device=device, data_dir=data_dir, tolerance=tolerance,
                           record=record, log=lambda line: typer.echo(line, err=True))
    for check in result.checks:
        typer.echo(check.line())
    verdict = "verified" if result.verified else "NOT verified"
    if not result.rerun:
        typer.echo(f"{bundle}: NOT verified ({len(result.checks)} rows claim what the bundled preset and sources do "
                   "not plan; nothing was rerun)")
    else:
        typer.echo(f"{bundle}: {verdict} ({sum(c.verified for c in result.checks)} of {len(result.checks)} cells "
                   "match)")
    if not result.verified:
        raise typer.Exit(1)
