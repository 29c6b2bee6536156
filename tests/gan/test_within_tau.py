"""SPEC §5 copy counts: count_tau(i) = #{g : d(f(g), f(x_i)) <= tau}, a radius count over every
training sample, checked against a brute-force count with near-duplicate training images."""

from __future__ import annotations

import pytest
import torch

from models.copying import copy_counts, within_tau_counts
from models.neighbours import Metric, nearest
from tests.gan.conftest import DigitSplits


def _brute_force(
    train: torch.Tensor, generated: torch.Tensor, taus: list[float], metric: Metric
) -> torch.Tensor:
    a, b = generated.flatten(1).double(), train.flatten(1).double()
    counts = torch.zeros((len(taus), b.shape[0]), dtype=torch.int64)
    for i in range(b.shape[0]):
        if metric == "euclidean":
            distance = (a - b[i]).norm(dim=1)
        else:
            distance = 1.0 - (a @ b[i]) / (a.norm(dim=1) * b[i].norm()).clamp_min(1e-300)
        for t, tau in enumerate(taus):
            counts[t, i] = int((distance <= tau).sum())
    return counts


def _with_near_duplicates(splits: DigitSplits) -> tuple[torch.Tensor, torch.Tensor]:
    train = splits.train[:200].flatten(1).clone()
    noise = torch.Generator().manual_seed(1)
    # training images 200..219 are near-duplicates of 0..19 (jitter 1e-3), 220..229 exact copies of 20..29
    near = train[:20] + 1e-3 * torch.randn(train[:20].shape, generator=noise)
    train = torch.cat([train, near, train[20:30]])  # (230, 64)
    # generated: slightly jittered copies of training images 0..39, plus fresh digits
    copies = train[:40] + 2e-3 * torch.randn(train[:40].shape, generator=noise)
    generated = torch.cat([copies, splits.fresh[:160].flatten(1)])  # (200, 64)
    return train, generated


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_radius_counts_match_a_brute_force_count(digit_splits: DigitSplits, metric: Metric) -> None:
    train, generated = _with_near_duplicates(digit_splits)
    d = nearest(generated, train, metric=metric).distance.double()
    taus = [0.0, float(d.quantile(0.2)), float(d.quantile(0.5)), float(d.max())]
    expected = _brute_force(train, generated, taus, metric)
    got = within_tau_counts(train, generated, taus, metric=metric)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # tiny blocks: the same counts however the work is cut
    torch.testing.assert_close(within_tau_counts(train, generated, taus, metric=metric, block_bytes=512), got)
    # a near-duplicate pair is credited for the same generated samples, the nearest-only count is not
    small = taus[1]
    row = taus.index(small)
    both = (got[row, :20] > 0) & (got[row, 200:220] > 0)
    assert both.sum() >= 10
    nearest_only = copy_counts(train.shape[0], nearest(generated, train, metric=metric), small).count
    assert int(nearest_only.sum()) < int(got[row].sum())
    assert int(nearest_only.sum()) == int((d <= small).sum())


def test_a_tau_equal_to_a_distance_counts_that_pair(digit_splits: DigitSplits) -> None:
    # the boundary is inclusive, decided in float64 even when the block distance rounds the other way
    train, generated = _with_near_duplicates(digit_splits)
    exact = (generated[5].double() - train[123].double()).norm().item()
    got = within_tau_counts(train, generated, [exact], metric="euclidean")
    assert got[0, 123] == _brute_force(train, generated, [exact], "euclidean")[0, 123] >= 1


def test_radius_counts_check_their_inputs() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        within_tau_counts(torch.zeros(3, 4), torch.zeros(2, 5), [0.1], metric="cosine")
    with pytest.raises(ValueError, match="empty"):
        within_tau_counts(torch.zeros(0, 4), torch.zeros(2, 4), [0.1], metric="cosine")
