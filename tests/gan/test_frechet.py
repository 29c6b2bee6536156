"""Fréchet distance against closed forms for Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from models.frechet import frechet_distance, frechet_from_moments


def test_diagonal_gaussians_match_the_closed_form() -> None:
    mean_a, mean_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.5])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float((mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum())
    found = frechet_from_moments(mean_a, torch.diag(var_a), mean_b, torch.diag(var_b))
    assert found == pytest.approx(expected, rel=1e-10)


def test_non_commuting_covariances_match_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
    found = frechet_from_moments(*(torch.from_numpy(x) for x in (mean_a, cov_a, mean_b, cov_b)))
    assert found == pytest.approx(expected, rel=1e-8)


def test_samples_converge_to_the_population_distance() -> None:
    gen = torch.Generator().manual_seed(0)
    scale_a, scale_b = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([1.5, 1.0, 0.5, 3.0])
    shift = torch.tensor([1.0, 0.0, -1.0, 0.0])
    a = torch.randn(200_000, 4, generator=gen, dtype=torch.float64) * scale_a
    b = torch.randn(200_000, 4, generator=gen, dtype=torch.float64) * scale_b + shift
    expected = float(shift.pow(2).sum() + (scale_a - scale_b).pow(2).sum())  # 2 + 0.25 + 1 + 4
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_mismatched_dimensions_and_tiny_sets_are_errors() -> None:
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
