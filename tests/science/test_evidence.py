"""Neighbour evidence (models/evidence.py): planted near-duplicates, a unique image, copies, the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.evidence import (
    EvidenceConfig,
    compute_evidence,
    copies_of,
    flagged_samples,
    load_evidence,
    save_evidence,
    with_copies,
)
from models.neighbours import nearest_k

PAIR_A, PAIR_B, UNIQUE = 10, 20, 30


def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """200 random 8x8 images; 20 is 10 plus tiny noise; 30 is a constant image far from all the others;
    held-out image 5 is a near-copy of 30. Scores put 10, 20, 30 on top."""
    rng = np.random.default_rng(0)
    train = rng.random((200, 1, 8, 8)).astype(np.float32) * 0.5
    train[PAIR_B] = train[PAIR_A] + rng.normal(0, 1e-3, size=(1, 8, 8)).astype(np.float32)
    train[UNIQUE] = 1.0
    heldout = rng.random((50, 1, 8, 8)).astype(np.float32) * 0.5
    heldout[5] = 0.99
    score = rng.normal(0.0, 1.0, size=200)
    score[[PAIR_A, PAIR_B, UNIQUE]] = [9.0, 8.0, 7.0]
    return train, heldout, score, train[PAIR_B] - train[PAIR_A]


def test_planted_pair_and_unique_image_get_the_expected_neighbours() -> None:
    train, heldout, score, noise = planted()
    evidence = compute_evidence(score, train, heldout=heldout,
                                config=EvidenceConfig(top=5, cap=5), block_bytes=512)  # fmt: skip
    assert evidence.sample_ids.tolist()[:3] == [PAIR_A, PAIR_B, UNIQUE] and len(evidence.sample_ids) == 5
    pair_distance = float(np.linalg.norm(noise.astype(np.float64)))
    a, b, u = (evidence.row_of(i) for i in (PAIR_A, PAIR_B, UNIQUE))
    assert a == 0 and b == 1 and u == 2
    assert evidence.train_index[a, 0] == PAIR_B and evidence.train_index[b, 0] == PAIR_A
    np.testing.assert_allclose(evidence.train_distance[[a, b], 0], pair_distance, rtol=1e-3)
    assert pair_distance < 0.02  # a near-duplicate: tiny, accurately computed (not cancelled)
    # The unique image: its nearest other training image is far; its distances are the brute-force ones.
    flat = train.reshape(200, -1).astype(np.float64)
    brute = np.linalg.norm(flat - flat[UNIQUE], axis=1)
    brute[UNIQUE] = np.inf
    expected = np.argsort(brute, kind="stable")[:3]
    assert evidence.train_index[u].tolist() == expected.tolist()
    np.testing.assert_allclose(evidence.train_distance[u], brute[expected], rtol=1e-5)
    assert evidence.train_distance[u, 0] > 50 * pair_distance
    assert UNIQUE not in evidence.train_index[u] and PAIR_A not in evidence.train_index[a]  # never itself
    assert evidence.heldout_index is not None and evidence.heldout_distance is not None
    assert evidence.heldout_index[u] == 5
    np.testing.assert_allclose(evidence.heldout_distance[u], 0.01 * 8, rtol=1e-4)
    assert evidence.space == "pixels" and evidence.generated_index is None


def test_uint8_levels_are_distances_between_intensities() -> None:
    train, _, score, _ = planted()
    levels = np.round(train * 255).astype(np.uint8)
    from_levels = compute_evidence(score, levels, config=EvidenceConfig(top=3, cap=3))
    floats = levels.astype(np.float32) / 255.0
    from_floats = compute_evidence(score, floats, config=EvidenceConfig(top=3, cap=3))
    np.testing.assert_allclose(from_levels.train_distance, from_floats.train_distance, rtol=1e-5)


@pytest.mark.parametrize("block_bytes", [64, 4096, 1 << 28])
def test_nearest_k_matches_brute_force(block_bytes: int) -> None:
    gen = torch.Generator().manual_seed(3)
    refs = torch.randn(61, 12, generator=gen)
    queries_at = torch.tensor([0, 5, 60, 33])
    found = nearest_k(refs[queries_at], refs, 4, exclude=queries_at, block_bytes=block_bytes)
    d = torch.cdist(refs[queries_at].double(), refs.double())
    d[torch.arange(4), queries_at] = float("inf")
    best, idx = d.topk(4, largest=False)
    assert torch.equal(found.index, idx)
    torch.testing.assert_close(found.distance.double(), best, atol=1e-5, rtol=1e-5)


def test_nearest_k_with_fewer_references_than_k_pads() -> None:
    refs = torch.tensor([[0.0], [1.0], [3.0]])
    found = nearest_k(refs[:1], refs, 5, exclude=torch.tensor([0]))
    assert found.index.tolist() == [[1, 2, -1, -1, -1]]
    assert found.distance[0, :2].tolist() == [1.0, 3.0] and torch.isinf(found.distance[0, 2:]).all()


def test_flagged_is_top_union_above_quantile_capped() -> None:
    score = np.arange(1000, dtype=np.float64)
    score[[3, 4]] = np.nan
    assert flagged_samples(score, EvidenceConfig(top=10, quantile=0.95, cap=500)).tolist() == \
        list(range(999, 949, -1))  # 50 above the 0.95 quantile: more than the top 10  # fmt: skip
    assert len(flagged_samples(score, EvidenceConfig(top=100, quantile=0.95, cap=500))) == 100
    assert len(flagged_samples(score, EvidenceConfig(top=100, quantile=0.5, cap=300))) == 300
    assert flagged_samples(np.full(5, np.nan)).size == 0
    tied = flagged_samples(np.array([1.0, 2.0, 2.0, 0.0]), EvidenceConfig(top=3, cap=3))
    assert tied.tolist() == [1, 2, 0]  # ties: lower id first


def test_copies_are_the_generated_samples_within_the_threshold_closest_first() -> None:
    nearest_of = np.array([7, 7, 7, 3, 3, 11, 0, 7])
    distance = np.array([0.03, 0.01, 0.02, 0.04, 0.2, 0.01, 0.5, 0.06])
    index, dist = copies_of(np.array([7, 3, 5]), nearest_of, distance, threshold=0.05, limit=2)
    assert index.tolist() == [[1, 2], [3, -1], [-1, -1]]
    np.testing.assert_allclose(dist[0], [0.01, 0.02])
    assert np.isnan(dist[1, 1]) and np.isnan(dist[2]).all()


def test_evidence_file_round_trips_without_pickle(tmp_path: Path) -> None:
    train, heldout, score, _ = planted()
    evidence = compute_evidence(score, train, heldout=heldout, generated=heldout[:10],
                                config=EvidenceConfig(top=4, cap=4))  # fmt: skip
    evidence = with_copies(evidence, np.array([PAIR_A, PAIR_A, 1]), np.array([0.1, 0.2, 0.3]), 0.25,
                           "pixels, cosine")  # fmt: skip
    path = tmp_path / "neighbours.npz"
    save_evidence(path, evidence)
    loaded = load_evidence(path)
    assert loaded.space == "pixels" and loaded.copies_space == "pixels, cosine"
    assert loaded.copy_threshold == 0.25
    for name in ("sample_ids", "train_index", "train_distance", "heldout_index", "generated_distance",
                 "copies_index"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(evidence, name))
    assert loaded.copies_index is not None and loaded.copies_index[0].tolist()[:2] == [0, 1]
    (tmp_path / "other.npz").write_bytes(b"not an npz")
    with pytest.raises(Exception):  # noqa: B017 - numpy's own error for a non-archive
        load_evidence(tmp_path / "other.npz")
