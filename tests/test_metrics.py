"""CA and ASR on hand-made examples with known answers."""

from __future__ import annotations

import math

import torch

from benchmark.data.pairs import EvalSet
from benchmark.metrics import evaluate, wilson


class BrightnessClassifier:
    """Class = round(mean brightness × 3): a classifier whose answers we can work out by hand."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        level = (images.mean(dim=(1, 2, 3)) * 3).round().long().clamp(0, 3)
        return torch.nn.functional.one_hot(level, 4).float()


def _eval_set() -> EvalSet:
    # 8 images at brightness levels 0, 1/3, 2/3, 1 (two each); labels: 6 right, 2 wrong.
    levels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    images = (levels.float() / 3 * 255).round().to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    labels = torch.tensor([0, 1, 1, 1, 2, 3, 3, 3])
    return EvalSet(images, labels, ["a", "b", "c", "d"])


def test_clean_accuracy_and_top5():
    metrics = evaluate(BrightnessClassifier(), _eval_set(), target=3, trigger=None, seed=0, device=torch.device("cpu"))
    assert (metrics.ca.k, metrics.ca.n) == (6, 8)
    assert metrics.ca_top5.value == 1.0  # 4 classes: top-5 always contains the truth
    assert metrics.asr is None


def test_asr_excludes_target_class_images():
    brighten = lambda images, generator: torch.ones_like(images)  # noqa: E731 - the trigger makes every image class 3
    metrics = evaluate(BrightnessClassifier(), _eval_set(), target=3, trigger=brighten, seed=0,
                       device=torch.device("cpu"))
    # Labels != 3: five images, all flipped to 3 by the trigger.
    assert (metrics.asr.k, metrics.asr.n) == (5, 5)
    half = lambda images, generator: images * 0 + 2 / 3  # noqa: E731 - everything becomes class 2: no success
    metrics = evaluate(BrightnessClassifier(), _eval_set(), target=3, trigger=half, seed=0, device=torch.device("cpu"))
    assert (metrics.asr.k, metrics.asr.n) == (0, 5)


def test_wilson_interval_matches_closed_form():
    k, n, z = 30, 100, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    interval = wilson(k, n)
    assert math.isclose(interval.low, centre - half, rel_tol=1e-6)
    assert math.isclose(interval.high, centre + half, rel_tol=1e-6)
    assert math.isnan(wilson(0, 0).low)


def test_predictions_are_the_counts_behind_the_metrics_and_round_trip(tmp_path):
    import numpy as np

    from benchmark.metrics import evaluate_with_predictions
    from benchmark.predictions import load_predictions

    darken = lambda images, generator: images * 0  # noqa: E731 - every triggered image becomes class 0
    metrics, predictions = evaluate_with_predictions(BrightnessClassifier(), _eval_set(), target=0, trigger=darken,
                                                     seed=0, device=torch.device("cpu"))
    assert predictions.clean_pred.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert predictions.triggered_index.tolist() == [1, 2, 3, 4, 5, 6, 7]  # image 0 has the target's label
    assert predictions.triggered_success.all() and (metrics.asr.k, metrics.asr.n) == (7, 7)
    assert predictions.clean_correct.sum() == metrics.ca.k == 6
    predictions.save(tmp_path / "p.npz")
    loaded = load_predictions(tmp_path / "p.npz")
    assert (loaded.n_classes, loaded.target) == (4, 0)
    assert np.array_equal(loaded.clean_pred, predictions.clean_pred)
    assert np.array_equal(loaded.triggered_index, predictions.triggered_index)


def test_a_predictions_file_that_lies_is_refused(tmp_path):
    import numpy as np
    import pytest

    from benchmark.predictions import PredictionsError, load_predictions

    arrays = dict(format=1, n_classes=4, target=0, clean_label=np.array([0, 1]), clean_pred=np.array([0, 9]),
                  triggered_index=np.array([1]), triggered_pred=np.array([0]))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PredictionsError, match="outside"):
        load_predictions(tmp_path / "bad.npz")
    np.savez(tmp_path / "pickled.npz", **{**arrays, "clean_pred": np.array([object()], dtype=object)})
    with pytest.raises(PredictionsError):
        load_predictions(tmp_path / "pickled.npz")  # object arrays need pickle, which is never allowed
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PredictionsError, match="not a readable"):
        load_predictions(tmp_path / "junk.npz")
