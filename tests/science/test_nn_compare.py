"""The nearest-neighbour comparison (SPEC §3): exact per-sample distances, rho, rank correlation with M."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from models import nn_compare
from models.nn_compare import compare_nearest, distance_ratio, downscale_images, rank_correlation


def _images(count: int, seed: int, shape: tuple[int, int, int] = (1, 4, 4)) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def _brute_force(queries: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(
        queries.reshape(len(queries), 1, -1).astype(np.float64) - refs.reshape(1, len(refs), -1), axis=2
    )  # (Q, R)
    return distances.min(axis=1), distances.argmin(axis=1)


@pytest.mark.parametrize("block_bytes", [256, 4096, 1 << 28])
def test_every_training_sample_gets_its_own_minimum(
    block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks and transfers split the training set into many batches: the reference's bug (the first
    # image's distance reused for its whole batch) would give batch-mates identical distances.
    monkeypatch.setattr(nn_compare, "QUERY_ROWS_PER_TRANSFER", 7)
    train, heldout, samples = _images(40, 0), _images(25, 1), _images(25, 2)
    found = compare_nearest(train, heldout, samples, block_bytes=block_bytes)
    expected_h, index_h = _brute_force(train, heldout)
    expected_s, index_s = _brute_force(train, samples)
    np.testing.assert_allclose(found.d_heldout, expected_h, rtol=1e-5)
    np.testing.assert_allclose(found.d_model, expected_s, rtol=1e-5)
    np.testing.assert_array_equal(found.heldout_index, index_h)
    np.testing.assert_array_equal(found.model_index, index_s)
    np.testing.assert_allclose(found.rho, expected_h / expected_s, rtol=1e-5)
    assert len(np.unique(found.d_heldout)) == 40 and found.reference_size == 25


def test_copied_training_images_have_the_largest_rho() -> None:
    train, heldout = _images(60, 3, (1, 6, 6)), _images(30, 4, (1, 6, 6))
    samples = _images(30, 5, (1, 6, 6))
    copied = np.array([7, 19, 42])
    samples[:3] = train[copied] + 1e-4
    found = compare_nearest(train, heldout, samples)
    assert set(np.argsort(-found.rho)[:3].tolist()) == set(copied.tolist())
    assert found.model_index[copied].tolist() == [0, 1, 2]
    assert (found.rho[copied] > 100).all()


def test_downscaling_averages_blocks_and_is_used_for_distances() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    pooled = downscale_images(images, 2)
    assert pooled.shape == (2, 1, 2, 2)
    assert pooled[0, 0, 0, 0] == images[0, 0, :2, :2].mean()
    with pytest.raises(ValueError, match="not divisible"):
        downscale_images(images, 3)
    train, heldout, samples = _images(10, 6), _images(5, 7), _images(5, 8)
    found = compare_nearest(train, heldout, samples, downscale=2)
    pool = lambda a: a.reshape(len(a), 1, 2, 2, 2, 2).mean(axis=(3, 5))  # noqa: E731
    expected, _ = _brute_force(pool(train), pool(heldout))
    np.testing.assert_allclose(found.d_heldout, expected, rtol=1e-5)
    assert found.downscale == 2


def test_set_sizes_and_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\|S\| = \|H\|"):
        compare_nearest(_images(5, 0), _images(4, 1), _images(3, 2))
    with pytest.raises(ValueError, match="differ in shape"):
        compare_nearest(_images(5, 0), _images(4, 1, (1, 4, 5)), _images(4, 2, (1, 4, 5)))
    with pytest.raises(ValueError, match="empty"):
        compare_nearest(_images(5, 0), _images(0, 1), _images(0, 2))


def test_ratio_of_exact_copies_and_double_zeros() -> None:
    rho = distance_ratio(np.array([2.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    assert rho[0] == 2.0 and np.isinf(rho[1]) and np.isnan(rho[2])


def test_rank_correlation_matches_scipy_and_skips_undefined_values() -> None:
    rng = np.random.default_rng(9)
    rho, scores = rng.random(50), rng.random(50)
    result = rank_correlation(rho, scores)
    assert result.statistic == pytest.approx(stats.spearmanr(rho, scores).statistic) and result.count == 50
    rho[3], scores[4] = np.nan, np.nan
    rho[5] = np.inf
    partial = rank_correlation(rho, scores)
    keep = np.ones(50, bool)
    keep[[3, 4]] = False
    finite_rho = rho.copy()
    finite_rho[5] = 1e9  # inf must rank like the largest value
    assert partial.count == 48
    assert partial.statistic == pytest.approx(stats.spearmanr(finite_rho[keep], scores[keep]).statistic)


def test_rank_correlation_is_perfect_for_monotone_relations_and_undefined_for_constants() -> None:
    scores = np.linspace(-1.0, 5.0, 20)
    assert rank_correlation(np.exp(scores), scores).statistic == pytest.approx(1.0)
    assert rank_correlation(-scores, scores).statistic == pytest.approx(-1.0)
    assert rank_correlation(np.ones(20), scores).statistic is None
    assert rank_correlation(np.ones(2), np.arange(2.0)).count == 2
