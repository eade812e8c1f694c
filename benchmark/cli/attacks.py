"""``cleanbench attacks …``: commands that look at attacks without training anything.

Kept out of :mod:`benchmark.cli.commands` so that module stays a list of thin commands; the drawing lives in
:mod:`benchmark.gallery`, imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from benchmark.cli.support import NoAutoloadOption, PluginOption, register_plugins_and_warn, user_errors
from benchmark.results import GALLERY_FILE

attacks_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect the registered attacks.")


@attacks_app.command("show")
@user_errors
def show(
    names: str = typer.Argument("all", help="Comma-separated attacks: names, wildcards and exclusions, e.g. "
                                                  "'all,-badclip'."),
    out: Path = typer.Option(Path(GALLERY_FILE), help="The PNG file to write."),
    preset: str = typer.Option("fmnist-tiny", help="A built-in preset name or a path to a preset .toml file."),
    count: int = typer.Option(4, min=1, max=32, help="Test images per attack."),
    seed: int = typer.Option(0, min=0, help="Seed of the attacks' fixed parts and of their per-image draws."),
    zoom: int = typer.Option(4, min=1, max=32, help="Each image pixel becomes zoom×zoom pixels."),
    plugin: Optional[List[str]] = PluginOption,
    no_plugin_autoload: bool = NoAutoloadOption,
) -> None:
    """Draw clean test images, the same images triggered, and the amplified difference, for each attack."""
    from attacks import ATTACKS
    from benchmark.gallery import draw_gallery
    from benchmark.presets import load_preset

    register_plugins_and_warn(plugin, no_plugin_autoload)
    chosen = ATTACKS.resolve(names)
    draw_gallery(load_preset(preset), chosen, out, count=count, seed=seed, zoom=zoom)
    typer.echo(f"wrote {out} ({', '.join(chosen)})")
