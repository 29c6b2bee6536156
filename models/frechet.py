"""Fréchet distance between two feature sets (the FID formula, in whatever feature space we use).

FD = ||mu_a - mu_b||^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^{1/2}).
tr((C_a C_b)^{1/2}) is computed as the sum of square roots of the eigenvalues of S C_b S with S = C_a^{1/2}
(a symmetric PSD matrix with the same spectrum as C_a C_b), in float64 with symmetric eigensolvers only, so no
complex intermediate values appear and tiny negative eigenvalues from round-off are clamped to zero.
"""

from __future__ import annotations

import torch


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)  # (D,), (D, D)
    roots = eigenvalues.clamp_min(0.0).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_from_moments(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b); means (D,), covariances (D, D)."""
    mean_a, mean_b = mean_a.double(), mean_b.double()
    cov_a, cov_b = cov_a.double(), cov_b.double()
    root_a = _symmetric_sqrt((cov_a + cov_a.T) / 2)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0.0).sqrt().sum()
    mean_term = (mean_a - mean_b).pow(2).sum()
    distance = mean_term + cov_a.trace() + cov_b.trace() - 2.0 * trace_sqrt
    return float(distance.clamp_min(0.0))


def feature_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    if features.shape[0] < 2:
        raise ValueError("Fréchet distance needs at least 2 samples per set")
    flat = features.flatten(1).double()
    mean = flat.mean(0)
    centred = flat - mean
    return mean, centred.T @ centred / (flat.shape[0] - 1)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (N_a, D) and (N_b, D)."""
    if features_a.flatten(1).shape[1] != features_b.flatten(1).shape[1]:
        raise ValueError("Fréchet distance: the two feature sets differ in dimension")
    mean_a, cov_a = feature_moments(features_a)
    mean_b, cov_b = feature_moments(features_b.to(features_a.device))
    return frechet_from_moments(mean_a, cov_a, mean_b, cov_b)
