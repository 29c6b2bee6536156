"""Chunked exact nearest-neighbour search against a brute-force reference."""

from __future__ import annotations

import pytest
import torch

from models.neighbours import nearest


def _brute_force(queries: torch.Tensor, refs: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, r = queries.flatten(1).double(), refs.flatten(1).double()
    if metric == "euclidean":
        d = torch.cdist(q, r)
    else:
        d = 1.0 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T
    best, idx = d.min(dim=1)
    return best, idx


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block_bytes", [64, 4096, 1 << 28])
def test_matches_brute_force_for_any_chunking(metric: str, block_bytes: int) -> None:
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(37, 3, 4, generator=gen)
    refs = torch.randn(53, 3, 4, generator=gen)
    found = nearest(queries, refs, metric=metric, block_bytes=block_bytes)  # type: ignore[arg-type]
    best, idx = _brute_force(queries, refs, metric)
    assert torch.equal(found.index, idx)
    torch.testing.assert_close(found.distance.double(), best, atol=1e-5, rtol=1e-5)


def test_near_duplicates_get_accurate_small_distances() -> None:
    gen = torch.Generator().manual_seed(2)
    refs = torch.rand(100, 784, generator=gen) * 100.0
    queries = refs[:10] + 1e-4 * torch.randn(10, 784, generator=gen)
    found = nearest(queries, refs)
    assert torch.equal(found.index, torch.arange(10))
    expected = (queries.double() - refs[:10].double()).norm(dim=1)
    torch.testing.assert_close(found.distance.double(), expected, rtol=1e-3, atol=1e-6)


def test_exclude_self_finds_the_other_nearest_point() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    found = nearest(points, points, exclude_self=True, block_bytes=8)
    assert found.index.tolist() == [1, 0, 3, 2]
    torch.testing.assert_close(found.distance, torch.tensor([1.0, 1.0, 0.5, 0.5]))


def test_dimension_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="dimension"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 4))
