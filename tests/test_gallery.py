"""``cleanbench attacks show``: the trigger gallery PNG, its size, and that its panels show the real trigger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attacks import ATTACKS
from benchmark.gallery import layout_for, trigger_samples
from benchmark.presets import load_preset

COUNT, ZOOM = 3, 2


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, request) -> tuple[Path, list, object]:
    """The gallery of every registered attack drawn through the CLI, with the samples and layout it used."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    preset = Path(request.config.rootpath) / "tests" / "data" / "fmnist-test.toml"
    out = tmp_path_factory.mktemp("gallery") / "trigger_gallery.png"
    result = CliRunner().invoke(app, ["attacks", "show", "all", "--preset", str(preset), "--out", str(out),
                                      "--count", str(COUNT), "--zoom", str(ZOOM)])
    assert result.exit_code == 0, result.output
    samples = trigger_samples(load_preset(str(preset)), ATTACKS.names(), count=COUNT, seed=0)
    return out, samples, layout_for(samples, ZOOM)


def _png(path: Path) -> np.ndarray:
    import matplotlib.image

    return np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(np.int16)


def _panel(png: np.ndarray, layout, attack: str, row: str, column: int) -> np.ndarray:
    top, left = layout.boxes[(attack, row, column)]
    return png[top : top + layout.panel, left : left + layout.panel]


def test_gallery_has_the_size_of_its_layout(gallery) -> None:
    path, samples, layout = gallery
    png = _png(path)
    assert png.shape[:2] == (layout.height, layout.width)
    assert layout.panel == 32 * ZOOM  # the preset's resolution, enlarged by the zoom
    assert len(layout.boxes) == len(ATTACKS.names()) * 3 * COUNT


def test_triggered_panels_differ_from_clean_ones_exactly_where_the_trigger_acts(gallery) -> None:
    path, samples, layout = gallery
    png = _png(path)
    for sample in samples:
        for column in range(COUNT):
            acts = (sample.triggered[column] != sample.clean[column]).any(0).numpy()
            expected = acts.repeat(ZOOM, 0).repeat(ZOOM, 1)
            clean = _panel(png, layout, sample.attack, "clean", column)
            triggered = _panel(png, layout, sample.attack, "triggered", column)
            difference = _panel(png, layout, sample.attack, "difference", column)
            assert expected.any(), f"{sample.attack}: the trigger changed nothing"
            assert np.array_equal((clean != triggered).any(-1), expected), sample.attack
            assert np.array_equal((difference != 0).any(-1), expected), sample.attack
            assert np.array_equal(clean, sample.clean[column].permute(1, 2, 0).numpy().repeat(ZOOM, 0).repeat(ZOOM, 1))


def test_badnet_panels_differ_only_inside_the_patch(gallery) -> None:
    path, samples, layout = gallery
    png = _png(path)
    patch = ATTACKS.get("badnet").Config().patch_size * ZOOM
    for column in range(COUNT):
        changed = (_panel(png, layout, "badnet", "clean", column) != _panel(png, layout, "badnet", "triggered", column)).any(-1)
        rows, cols = np.nonzero(changed)
        assert rows.max() - rows.min() < patch and cols.max() - cols.min() < patch


def test_unknown_attack_is_a_clear_error(cli, tmp_path: Path) -> None:
    code, _, err = cli("attacks", "show", "blend", "--out", tmp_path / "g.png")
    assert code == 2 and "Did you mean" in err and "blended" in err
    assert not (tmp_path / "g.png").exists()
