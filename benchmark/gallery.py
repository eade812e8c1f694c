"""The trigger gallery: for each attack, a few clean test images, the same images triggered, and the difference.

The picture is one pixel-exact mosaic (each image enlarged by an integer ``zoom``, nearest neighbour) with the
labels drawn in the margins, so a reader sees the trigger at the preset's real resolution and a test can find
every panel at a known place in the PNG. The difference row is ``|triggered - clean|`` scaled so that the
largest change of that attack is white; the factor is printed next to it (a WaNet jitter needs a large one).
The triggered images are what ASR evaluation feeds the model: ``attack.apply`` with a seeded generator,
quantised to uint8 (a label-consistent PGD perturbation is part of poisoning, not of the test-time trigger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmark.data.pairs import EvalSet, to_float, to_uint8
from benchmark.presets import Preset, split_attack_settings
from benchmark.seeding import derive_seed

ROWS = ("clean", "triggered", "difference")
MAX_AMPLIFY = 255.0


@dataclass
class AttackSamples:
    """One attack's panels: uint8 (N, 3, H, W) clean and triggered images, and the difference's scale factor."""

    attack: str
    clean: torch.Tensor
    triggered: torch.Tensor

    @property
    def amplify(self) -> float:
        largest = int((self.triggered.int() - self.clean.int()).abs().max())
        return min(MAX_AMPLIFY, 255.0 / largest) if largest else 1.0

    def difference(self) -> torch.Tensor:
        """``|triggered - clean|`` amplified, as uint8 (N, 3, H, W)."""
        diff = (self.triggered.float() - self.clean.float()).abs() * self.amplify
        return diff.round().clamp(0, 255).to(torch.uint8)


@dataclass
class GalleryLayout:
    """Where everything sits in the PNG: ``boxes[(attack, row, column)] = (top, left)`` of a ``panel``-px square."""

    width: int
    height: int
    panel: int
    boxes: dict[tuple[str, str, int], tuple[int, int]] = field(default_factory=dict)


def pick_images(test_set: EvalSet, count: int, skip_class: int) -> torch.Tensor:
    """The first test image of each of the first ``count`` classes other than ``skip_class`` (varied, stable)."""
    chosen: list[int] = []
    seen: set[int] = set()
    for index, label in enumerate(test_set.labels.tolist()):
        if label != skip_class and label not in seen:
            seen.add(label)
            chosen.append(index)
            if len(chosen) == count:
                break
    if len(chosen) < count:  # fewer classes than requested: fill with further non-target images
        rest = [i for i, label in enumerate(test_set.labels.tolist()) if label != skip_class and i not in chosen]
        chosen += rest[: count - len(chosen)]
    return test_set.images[chosen]


def trigger_samples(preset: Preset, names: list[str], *, count: int = 4, seed: int = 0,
                    cache_dir: Path | None = None) -> list[AttackSamples]:
    """Trigger the same ``count`` test images of ``preset`` with each attack, configured as the preset says.
    ``cache_dir``: a run's cache of attack artifacts, so an optimised trigger (BadCLIP's) is the run's, not
    optimised again."""
    from attacks import ATTACKS
    from benchmark.runner.plan import attack_context
    from benchmark.task import build_task

    task = build_task(preset)
    clean = pick_images(task.test_set, count, task.target_index)
    samples = []
    for name in names:
        _, settings = split_attack_settings(preset.attacks.get(name))
        context = attack_context(preset, task, seed, torch.device("cpu"), cache_dir)
        attack = ATTACKS.get(name).from_settings(settings, context=context)
        generator = torch.Generator().manual_seed(derive_seed(seed, "gallery", name))
        triggered = to_uint8(attack.apply(to_float(clean), generator))
        samples.append(AttackSamples(name, clean, triggered))
    return samples


def layout_for(samples: list[AttackSamples], zoom: int, *, margin: int = 120, header: int = 24,
               gutter: int = 4) -> GalleryLayout:
    """Place every panel: a header band per attack, then its three rows; row labels in the left margin."""
    count, size = samples[0].clean.shape[0], samples[0].clean.shape[-1]
    panel = size * zoom
    layout = GalleryLayout(width=margin + count * (panel + gutter), height=gutter, panel=panel)
    for sample in samples:
        top = layout.height + header
        for row_index, row in enumerate(ROWS):
            for column in range(count):
                layout.boxes[(sample.attack, row, column)] = (top + row_index * (panel + gutter),
                                                              margin + column * (panel + gutter))
        layout.height = top + len(ROWS) * (panel + gutter)
    return layout


def render_gallery(samples: list[AttackSamples], out: Path, *, zoom: int = 4, dpi: int = 100) -> GalleryLayout:
    """Write the gallery PNG to ``out`` and return its layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not samples:
        raise ValueError("render_gallery needs at least one attack")
    layout = layout_for(samples, zoom)
    mosaic = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    for sample in samples:
        rows = {"clean": sample.clean, "triggered": sample.triggered, "difference": sample.difference()}
        for (attack, row, column), (top, left) in layout.boxes.items():
            if attack == sample.attack:
                image = rows[row][column].permute(1, 2, 0).numpy()
                mosaic[top : top + layout.panel, left : left + layout.panel] = image.repeat(zoom, 0).repeat(zoom, 1)

    figure = Figure(figsize=(layout.width / dpi, layout.height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.figimage(mosaic, xo=0, yo=0, origin="upper")
    for sample in samples:
        top, _ = layout.boxes[(sample.attack, "clean", 0)]
        _text(figure, layout, 6, top - 12, sample.attack, weight="bold", size=11)
        labels = {"clean": "clean", "triggered": "triggered", "difference": f"|diff| ×{sample.amplify:.0f}"}
        for row in ROWS:
            row_top, _ = layout.boxes[(sample.attack, row, 0)]
            _text(figure, layout, 6, row_top + layout.panel / 2, labels[row], size=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    return layout


def _text(figure, layout: GalleryLayout, x: float, y: float, text: str, **style) -> None:
    """Text with its left edge at pixel ``x`` and vertical centre at pixel ``y`` from the top."""
    figure.text(x / layout.width, 1 - y / layout.height, text, ha="left", va="center", parse_math=False, **style)


def draw_gallery(preset: Preset, names: list[str], out: Path, *, count: int = 4, seed: int = 0,
                 zoom: int = 4, cache_dir: Path | None = None) -> GalleryLayout:
    """The whole job of ``cleanbench attacks show``: trigger the preset's test images, write the PNG."""
    return render_gallery(trigger_samples(preset, names, count=count, seed=seed, cache_dir=cache_dir), out, zoom=zoom)
