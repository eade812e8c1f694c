"""Huang et al.'s k-distance, SLOF and DAO detectors (``defenses/detect_outliers.py``): planted outliers are found,
the scores equal a loop-by-loop computation of the methods reference's formulas (the authors' neighbour-index shift
included), the reference batches scatter scores back to the pairs' order, and ``score`` runs on a tiny victim."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.data.pairs import EvalSet, PairSet
from benchmark.errors import UserError
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training_recipe import TrainRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext, Detector
from defenses.detect_outliers import (
    INF_SCORE,
    batched_scores,
    dao_scores,
    kdistance_scores,
    reference_batches,
    slof_scores,
)

SCORES = {"kdist": kdistance_scores, "slof": slof_scores, "dao": dao_scores}
MODES = ("authors", "corrected")


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counting half: every (positive, negative) pair counted."""
    pos, neg = scores[positive].tolist(), scores[~positive].tolist()
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _planted(far_cluster: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """500 clean points of a unit Gaussian in 16-d plus 10 planted ones: a tight cluster far away (as backdoor
    images embed) or 10 isolated points far out in different directions."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    if far_cluster:
        planted = 20.0 + 0.01 * torch.randn(10, 16, generator=generator, dtype=torch.float64)
    else:
        directions = torch.nn.functional.normalize(torch.randn(10, 16, generator=generator, dtype=torch.float64), dim=1)
        planted = 25.0 * directions
    features = torch.cat([clean, planted])
    positive = torch.zeros(len(features), dtype=torch.bool)
    positive[500:] = True
    order = torch.randperm(len(features), generator=generator)  # planted points not all at the end
    return features[order], positive[order]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("far_cluster", [True, False])
@pytest.mark.parametrize("name", sorted(SCORES))
def test_planted_outliers_are_ranked_first(name: str, far_cluster: bool, mode: str):
    features, positive = _planted(far_cluster)
    scores = SCORES[name](features, 16, None, mode)  # k = 16 > the 10 planted points
    assert scores.shape == (len(features),) and torch.isfinite(scores).all()
    assert auroc(scores, positive) == 1.0


def test_a_cluster_larger_than_k_hides_from_k_distance():
    """Why k must exceed the poison cluster: with k = 4 < 10 a planted point's neighbours are its cluster mates."""
    features, positive = _planted(far_cluster=True)
    assert auroc(kdistance_scores(features, 4), positive) < 0.01


# ---- the formulas, point by point ----------------------------------------------------------------------------


def _loop_scores(images: list[list[float]], k: int, mode: str, texts: list[list[float]] | None = None) -> dict:
    """k-distance, SLOF and DAO of every image written out as in methods reference §5, one point at a time.

    Candidates of query x: the other images, then (with ``texts``) the other pairs' captions, in that order. The
    authors use a candidate's position in that own-removed list as its row among all references (the "Caveat");
    ``corrected`` uses its true row and the same neighbour rank (k+1-th other point) for x and o."""
    references = images + (texts or [])
    n = len(images)
    dist = [[math.dist(p, q) for q in references] for p in references]
    sorted_rows = [sorted(row) for row in dist]  # Â: self (0) included

    def kd_ref(o: int) -> float:
        return sorted_rows[o][k] if mode == "authors" else sorted_rows[o][k + 1]

    def lid_ref(o: int) -> float:
        near = range(k) if mode == "authors" else range(1, k + 1)
        return -k / sum(math.log(sorted_rows[o][i] / kd_ref(o) + 1e-4) for i in near)

    out = {"kdist": [], "slof": [], "dao": []}
    for x in range(n):
        candidates = [j for j in range(n) if j != x] + ([n + j for j in range(n) if j != x] if texts else [])
        ranked = sorted(range(len(candidates)), key=lambda p: dist[x][candidates[p]])
        kd_x = dist[x][candidates[ranked[k]]]
        neighbours = ranked[:k] if mode == "authors" else [candidates[p] for p in ranked[:k]]
        out["kdist"].append(kd_x)
        out["slof"].append(sum(kd_x / kd_ref(o) for o in neighbours) / k)
        out["dao"].append(sum(lid_ref(o) * math.log(kd_x / kd_ref(o)) for o in neighbours) / k)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_texts", [False, True])
def test_scores_equal_the_formulas_computed_point_by_point(mode: str, with_texts: bool):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(13, 3, generator=generator, dtype=torch.float64)
    texts = torch.randn(13, 3, generator=generator, dtype=torch.float64) + 0.5 if with_texts else None
    k = 4
    expected = _loop_scores(images.tolist(), k, mode, texts.tolist() if with_texts else None)
    for name, fn in SCORES.items():
        got = fn(images, k, texts, mode)
        assert got.tolist() == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def test_the_two_neighbour_indexings_differ():
    """The shift is real: the authors' and the corrected SLOF and DAO disagree on generic data."""
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    for fn in (slof_scores, dao_scores):
        assert not torch.allclose(fn(features, 5, None, "authors"), fn(features, 5, None, "corrected"))


@pytest.mark.parametrize("mode", MODES)
def test_duplicates_make_infinite_ratios_which_map_to_the_authors_1000(mode: str):
    generator = torch.Generator().manual_seed(2)
    features = torch.cat([torch.randn(20, 4, generator=generator), torch.ones(6, 4)])  # 6 identical images
    for fn in (slof_scores, dao_scores):
        scores = fn(features, 3, None, mode)  # every neighbour distance of a copy is 0: 0/0
        assert torch.isfinite(scores).all()
        assert scores[20:].tolist() == [INF_SCORE] * 6


# ---- reference batches ---------------------------------------------------------------------------------------


def test_reference_batches_score_every_pair_once_in_full_batches():
    batches = reference_batches(1030, 256, torch.Generator().manual_seed(0))
    assert [queries for _, queries in batches] == [256, 256, 256, 256, 6]
    assert all(len(indices) == 256 and len(set(indices.tolist())) == 256 for indices, _ in batches)
    scored = torch.cat([indices[:queries] for indices, queries in batches])
    assert sorted(scored.tolist()) == list(range(1030))
    again = reference_batches(1030, 256, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))
    other = reference_batches(1030, 256, torch.Generator().manual_seed(1))
    assert not torch.equal(batches[0][0], other[0][0])
    assert [len(i) for i, _ in reference_batches(40, 512, torch.Generator())] == [40]  # fewer pairs: one batch


def test_batched_scores_come_back_in_the_pairs_order():
    features = torch.randn(1030, 5, generator=torch.Generator().manual_seed(0))
    sizes = []

    def first_coordinate(batch, k, texts, mode):  # a row-wise score: it tells where each row went
        sizes.append(len(batch))
        return batch[:, 0]

    scores = batched_scores(first_coordinate, features, 16, 256, torch.Generator().manual_seed(4))
    assert torch.equal(scores, features[:, 0])
    assert sizes == [256] * 5


def test_one_batch_scores_follow_a_permutation_of_the_pairs():
    """k-distance and the corrected SLOF and DAO depend on the pairs, not on their order in the batch; the authors'
    shifted neighbour index makes their SLOF and DAO depend on that order too."""
    features = torch.randn(200, 6, generator=torch.Generator().manual_seed(5))
    permutation = torch.randperm(200, generator=torch.Generator().manual_seed(6))

    def permuted_pair(fn, mode):
        scores = batched_scores(fn, features, 8, 512, torch.Generator().manual_seed(0), mode=mode)
        permuted = batched_scores(fn, features[permutation], 8, 512, torch.Generator().manual_seed(9), mode=mode)
        return permuted, scores[permutation]

    for fn, mode in [(kdistance_scores, "authors"), (slof_scores, "corrected"), (dao_scores, "corrected")]:
        assert torch.allclose(*permuted_pair(fn, mode), rtol=1e-5, atol=1e-6)
    for fn in (slof_scores, dao_scores):
        assert not torch.allclose(*permuted_pair(fn, "authors"), rtol=1e-5, atol=1e-6)


def test_batched_scores_are_deterministic_for_the_seed():
    features = torch.randn(700, 6, generator=torch.Generator().manual_seed(7))
    first = batched_scores(dao_scores, features, 8, 128, torch.Generator().manual_seed(3))
    assert torch.equal(first, batched_scores(dao_scores, features, 8, 128, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, batched_scores(dao_scores, features, 8, 128, torch.Generator().manual_seed(4)))


# ---- the registered detectors ----------------------------------------------------------------------------------

MODEL = "cleanbench-vit-tiny"


def _pairs(n: int, seed: int = 0) -> PairSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 4
    return PairSet(images, [f"a photo of a thing number {int(label)}." for label in labels], labels)


@pytest.fixture(scope="module")
def victim():
    """One tiny CLIP for the module: scoring only reads it."""
    return create_model(MODEL, seed=0).eval()


def _context(seed: int = 5) -> DefenseContext:
    val = EvalSet(_pairs(4, seed=1).images, torch.arange(4), ["a", "b", "c", "d"])
    return DefenseContext(torch.device("cpu"), seed, TrainRecipe(epochs=1, batch_size=8), tokenizer_for(MODEL), val,
                          Reporter.silent())


@pytest.mark.parametrize("name", ["detect-kdist", "detect-slof", "detect-dao"])
def test_score_on_a_tiny_victim_gives_one_finite_score_per_pair(name: str, victim):
    detector = DEFENSES.get(name).from_settings({"k": 4, "reference_size": 16, "encode_batch_size": 7})
    assert isinstance(detector, Detector) and detector.stage == "data"
    model = victim
    pairs, context = _pairs(40), _context()
    scores = detector.score(model, pairs, context)
    assert scores.shape == (40,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert torch.equal(scores, detector.score(model, pairs, context))  # seeded reference batches
    with_texts = DEFENSES.get(name).from_settings({"k": 4, "reference_size": 16, "modality": "image+text"})
    scores = with_texts.score(model, pairs, context)
    assert scores.shape == (40,) and torch.isfinite(scores).all()


def test_score_refuses_fewer_pairs_than_k_needs(victim):
    detector = DEFENSES.get("detect-kdist").from_settings({"k": 16})
    with pytest.raises(UserError, match=r"k = 16 needs at least k \+ 2 = 18 training pairs; there are 10"):
        detector.score(victim, _pairs(10), _context())


@pytest.mark.parametrize(("settings", "message"), [
    ({"k": 0}, r"k = 0 is out of range; allowed: \[1, inf\]"),
    ({"reference_size": 10}, r"reference_size = 10 is out of range; allowed: \[k \+ 2 = 18"),
    ({"encode_batch_size": 0}, r"encode_batch_size = 0 is out of range"),
    ({"modality": "text"}, r"modality = 'text' is not allowed; choose one of: image, image\+text"),
    ({"neighbour_index": "fixed"}, r"neighbour_index = 'fixed' is not allowed; choose one of: authors, corrected"),
])
def test_config_refuses_bad_values_naming_the_key(settings: dict, message: str):
    with pytest.raises(UserError, match=rf"defenses\.detect-dao.*{message}"):
        DEFENSES.get("detect-dao").from_settings(settings)
