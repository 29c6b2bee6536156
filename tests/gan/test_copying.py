"""C_T (SPEC §4): the per-cell Mann-Whitney statistic, the exact formulas, and the three planted cases."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from models.copying import (
    CopyTestConfig,
    copy_counts,
    copy_threshold,
    data_copying_test,
    fit_kmeans,
    fit_pca,
    mann_whitney_u,
    nn_ratio,
    resolve_cells,
)
from models.neighbours import nearest
from tests.gan.conftest import DigitSplits


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def test_u_counts_pairs_where_generated_is_farther_with_ties_half() -> None:
    generated = torch.tensor([1.0, 2.0, 2.0, 5.0])
    test = torch.tensor([2.0, 3.0, 0.5])
    brute = sum(
        1.0 if a > b else 0.5 if a == b else 0.0 for a in generated.tolist() for b in test.tolist()
    )
    assert mann_whitney_u(generated, test) == brute == 7.0


def test_u_matches_scipy_in_every_cell(digit_splits: DigitSplits) -> None:
    # Rounded distances create ties, which is where a wrong tie rule would show.
    splits = _flat(digit_splits.train), _flat(digit_splits.test), _flat(digit_splits.fresh)
    result = data_copying_test(*splits, CopyTestConfig(cells=5))
    generated_d, test_d = result.generated_cell_distance, result.test_cell_distance
    assert torch.isfinite(generated_d).all() and torch.isfinite(test_d).all()
    centroids = fit_kmeans(_flat(digit_splits.train), 5, seed=0)
    generated_cell = nearest(_flat(digit_splits.fresh), centroids).index
    test_cell = nearest(_flat(digit_splits.test), centroids).index
    for row in result.cells:
        l_q = generated_d[generated_cell == row.cell]
        l_p = test_d[test_cell == row.cell]
        assert (len(l_q), len(l_p)) == (row.n_generated, row.n_test)
        expected = scipy.stats.mannwhitneyu(l_q.double().numpy(), l_p.double().numpy()).statistic
        assert row.u == pytest.approx(expected, abs=1e-9)
        q_tied, p_tied = l_q.double().round(decimals=1), l_p.double().round(decimals=1)
        rounded = scipy.stats.mannwhitneyu(q_tied.numpy(), p_tied.numpy())
        assert mann_whitney_u(q_tied, p_tied) == pytest.approx(rounded.statistic)
        m, n = row.n_generated, row.n_test
        assert row.z_u == pytest.approx((row.u - m * n / 2 + 0.5) / math.sqrt(m * n * (m + n + 1) / 12))


def test_c_t_is_the_test_share_weighted_mean_over_kept_cells(digit_splits: DigitSplits) -> None:
    splits = _flat(digit_splits.train), _flat(digit_splits.test), _flat(digit_splits.fresh)
    result = data_copying_test(*splits, CopyTestConfig(cells=10))
    n = digit_splits.test.shape[0]
    assert sum(row.n_test for row in result.cells) == n
    kept = [row for row in result.cells if row.n_generated > 20]  # tau = 20 / m, strictly greater
    assert [row.kept for row in result.cells] == [row.n_generated > 20 for row in result.cells]
    expected = sum(r.n_test / n * r.z_u for r in kept) / sum(r.n_test / n for r in kept)
    assert result.c_t == pytest.approx(expected)


def test_tau_is_strict_a_cell_with_exactly_the_threshold_share_is_dropped() -> None:
    gen = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0]])

    def two_blobs(first: int, second: int) -> torch.Tensor:
        sizes = (first, second)
        return torch.cat([centres[i] + torch.randn(sizes[i], 2, generator=gen) for i in range(2)])

    train, test, generated = two_blobs(200, 200), two_blobs(50, 50), two_blobs(20, 80)
    result = data_copying_test(train, test, generated, CopyTestConfig(cells=2))
    by_size = {row.n_generated: row for row in result.cells}
    assert set(by_size) == {20, 80}
    assert not by_size[20].kept and by_size[80].kept  # 20/100 is not > 20/100
    assert result.c_t == pytest.approx(by_size[80].z_u)


def test_planted_copies_fresh_and_blurred(digit_splits: DigitSplits) -> None:
    train, test = _flat(digit_splits.train), _flat(digit_splits.test)
    noise = torch.Generator().manual_seed(1)
    copies = train[:450] + 0.01 * torch.randn(450, 64, generator=noise)
    blurred = torch.nn.functional.avg_pool2d(digit_splits.fresh, 3, 1, 1, count_include_pad=False)
    config = CopyTestConfig(cells=5)
    c_copies = data_copying_test(train, test, copies, config).c_t
    c_fresh = data_copying_test(train, test, _flat(digit_splits.fresh), config).c_t
    c_blurred = data_copying_test(train, test, _flat(blurred), config).c_t
    assert c_copies < -5.0
    assert abs(c_fresh) < 2.0
    assert c_blurred > 5.0


def test_cell_without_test_samples_is_an_error_naming_it() -> None:
    gen = torch.Generator().manual_seed(4)
    train = torch.cat([torch.randn(100, 3, generator=gen), 100.0 + torch.randn(100, 3, generator=gen)])
    test = torch.randn(60, 3, generator=gen)  # nothing near the second cluster
    with pytest.raises(ValueError, match=r"cell \d+ has no test samples"):
        data_copying_test(train, test, torch.randn(60, 3, generator=gen), CopyTestConfig(cells=2))


def test_no_kept_cell_and_bad_features_are_errors() -> None:
    gen = torch.Generator().manual_seed(5)
    train, test = torch.randn(100, 4, generator=gen), torch.randn(50, 4, generator=gen)
    with pytest.raises(ValueError, match="no cell holds"):
        data_copying_test(train, test, torch.randn(20, 4, generator=gen), CopyTestConfig(cells=1))
    with pytest.raises(ValueError, match="generated: features have 3 dimensions"):
        data_copying_test(train, test, torch.randn(30, 3, generator=gen), CopyTestConfig(cells=1))
    bad = test.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="test: contains NaN"):
        data_copying_test(train, bad, test, CopyTestConfig(cells=1))
    with pytest.raises(ValueError, match="cells: 200 cells need"):
        data_copying_test(train, test, test, CopyTestConfig(cells=200))


def test_kmeans_finds_separated_clusters_and_is_seeded() -> None:
    gen = torch.Generator().manual_seed(6)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(100, 2, generator=gen) for c in centres])
    found = fit_kmeans(points, 3, seed=7)
    assert torch.equal(found, fit_kmeans(points, 3, seed=7))
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.2


def test_pca_projects_to_64_dims_only_when_larger() -> None:
    gen = torch.Generator().manual_seed(8)
    wide = torch.randn(300, 100, generator=gen) * torch.linspace(5, 0.1, 100)
    projection = fit_pca(wide, 64)
    assert projection is not None and projection.components.shape == (100, 64)
    eye = projection.components.T @ projection.components
    torch.testing.assert_close(eye, torch.eye(64), atol=1e-4, rtol=0)
    assert fit_pca(wide[:, :64], 64) is None
    variances = projection.apply(wide).var(0)
    assert bool((variances[:-1] >= variances[1:] - 1e-4).all())  # largest variance first


def test_copied_training_images_top_the_copy_count_ranking(digit_splits: DigitSplits) -> None:
    train, test = _flat(digit_splits.train), _flat(digit_splits.test)
    copied = torch.tensor([5, 77, 300, 640])
    noise = torch.Generator().manual_seed(9)
    copies = train[copied].repeat_interleave(5, 0) + 0.005 * torch.randn(20, 64, generator=noise)
    generated = torch.cat([copies, _flat(digit_splits.fresh)[:380]])
    threshold = copy_threshold(nearest(test, train).distance, 0.05)
    counts = copy_counts(train.shape[0], nearest(generated, train), threshold)
    assert set(counts.ranking()[:4].tolist()) == set(copied.tolist())
    assert counts.count[copied].tolist() == [5, 5, 5, 5]
    assert int(counts.count.sum()) >= 20


def test_nn_ratio_flags_reproduced_training_samples(digit_splits: DigitSplits) -> None:
    train, test = _flat(digit_splits.train), _flat(digit_splits.test)
    generated = torch.cat([train[:50] + 1e-3, _flat(digit_splits.fresh)[:400]])
    ratio = nn_ratio(train, test, generated)
    assert ratio.sample_size == 450
    assert bool((ratio.rho[:50] > 1).all())
    torch.testing.assert_close(ratio.rho, ratio.heldout_distance / ratio.generated_distance)


def test_resolve_cells_keeps_reference_for_large_test_sets() -> None:
    assert resolve_cells(None, 10_000) == 50
    assert resolve_cells(None, 299) == 5
    assert resolve_cells(None, 10) == 1
    assert resolve_cells(7, 10) == 7
