"""Each decoder log-probability against an independent computation (numpy/scipy), plus normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logit

from models.likelihoods import (
    LOGIT_LAMBDA,
    MIN_LOG_VAR,
    bernoulli_log_prob,
    decoder_log_prob,
    discretized_logistic_log_prob,
    logit_gaussian_log_prob,
    represent,
)

RNG = np.random.default_rng(0)


def test_bernoulli_matches_scipy() -> None:
    logits = RNG.normal(0, 3, size=(5, 12))
    x = (RNG.random((5, 12)) < 0.5).astype(np.float64)
    expected = stats.bernoulli.logpmf(x, expit(logits)).sum(-1)
    got = bernoulli_log_prob(torch.tensor(logits), torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def _logit_gaussian_reference(mean: np.ndarray, var: np.ndarray, x_deq: np.ndarray) -> np.ndarray:
    """Density of x_deq by the change of variables written out in numpy, then per-bin mass (1/256)."""
    p = LOGIT_LAMBDA + (1 - 2 * LOGIT_LAMBDA) * x_deq
    y = logit(p)
    dy_dx = (1 - 2 * LOGIT_LAMBDA) / (p * (1 - p))
    density = stats.norm.pdf(y, loc=mean, scale=np.sqrt(var)) * dy_dx
    return np.log(density / 256.0).sum(-1)


def test_logit_gaussian_matches_change_of_variables() -> None:
    mean = RNG.normal(0, 1, size=(4, 10))
    log_var = RNG.uniform(-3, 1, size=(4, 10))
    x8 = RNG.integers(0, 256, size=(4, 10))
    x_deq = (RNG.random((4, 10)) + x8) / 256.0
    got = logit_gaussian_log_prob(torch.tensor(mean), torch.tensor(log_var), torch.tensor(x_deq)).numpy()
    np.testing.assert_allclose(got, _logit_gaussian_reference(mean, np.exp(log_var), x_deq), rtol=1e-9)


def test_logit_gaussian_mass_is_the_gaussian_mass_inside_the_logit_range() -> None:
    # exp(log p + log 256) is a density on (0, 1); its total mass is the Gaussian's mass on
    # [logit(lambda), logit(1 - lambda)], the image of (0, 1) (SPEC §2 does not renormalise)
    grid = (np.arange(400_000) + 0.5) / 400_000
    mean, log_var = 0.3, -0.5
    log_p = logit_gaussian_log_prob(
        torch.tensor(mean), torch.tensor(log_var), torch.tensor(grid)[:, None]
    ).numpy()
    edge = logit(1 - LOGIT_LAMBDA)
    inside = stats.norm.cdf(edge, mean, np.exp(log_var / 2)) - stats.norm.cdf(
        -edge, mean, np.exp(log_var / 2)
    )
    assert inside < 0.9997  # the check below can tell the two apart
    assert np.exp(log_p + np.log(256.0)).mean() == pytest.approx(inside, abs=1e-6)


def test_log_variance_is_clamped_at_minus_seven() -> None:
    x = torch.full((1, 3), 0.4)
    clamped = logit_gaussian_log_prob(torch.zeros(1, 3), torch.full((1, 3), -20.0), x)
    at_floor = logit_gaussian_log_prob(torch.zeros(1, 3), torch.full((1, 3), MIN_LOG_VAR), x)
    assert torch.allclose(clamped, at_floor)


def test_gaussian_const_uses_one_scalar_variance_per_model() -> None:
    params = torch.tensor(RNG.normal(0, 1, size=(2, 3, 1, 6)))  # (E, B, P, D)
    x = torch.tensor(RNG.random((2, 3, 6)))
    log_var = torch.tensor([-1.0, 0.5], dtype=torch.float64)  # (E,)
    got = decoder_log_prob(params, x, "gaussian_const", log_var[:, None])
    for e in range(2):
        expected = _logit_gaussian_reference(params[e, :, 0].numpy(), np.exp(log_var[e].item()), x[e].numpy())
        np.testing.assert_allclose(got[e].numpy(), expected, rtol=1e-9)


def _logistic_reference(mean: float, scale: float, level: int) -> float:
    lo = -np.inf if level == 0 else (level - 0.5) / 255.0
    hi = np.inf if level == 255 else (level + 0.5) / 255.0
    return float(np.log(stats.logistic.cdf(hi, mean, scale) - stats.logistic.cdf(lo, mean, scale)))


@pytest.mark.parametrize("level", [0, 1, 77, 128, 254, 255])
def test_discretized_logistic_matches_scipy_cdf(level: int) -> None:
    mean, log_scale = 0.45, -2.5
    got = discretized_logistic_log_prob(
        torch.tensor([[mean]], dtype=torch.float64),
        torch.tensor([[log_scale]], dtype=torch.float64),
        torch.tensor([[level / 255.0]], dtype=torch.float64),
    )
    assert got.item() == pytest.approx(_logistic_reference(mean, np.exp(log_scale), level), rel=1e-8)


def test_discretized_logistic_sums_to_one_and_over_pixels() -> None:
    levels = torch.arange(256, dtype=torch.float64)[:, None] / 255.0
    f64 = torch.float64
    log_p = discretized_logistic_log_prob(
        torch.tensor([[0.9]], dtype=f64), torch.tensor([[-4.0]], dtype=f64), levels
    )
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-10)
    two_pixels = discretized_logistic_log_prob(
        torch.tensor([0.2, 0.7], dtype=f64),
        torch.tensor([-3.0, -1.0], dtype=f64),
        torch.tensor([10 / 255, 200 / 255], dtype=f64),
    )
    expected = _logistic_reference(0.2, np.exp(-3.0), 10) + _logistic_reference(0.7, np.exp(-1.0), 200)
    assert two_pixels.item() == pytest.approx(expected, rel=1e-8)


def test_discretized_logistic_is_finite_far_in_the_tails() -> None:
    far = discretized_logistic_log_prob(torch.tensor([0.0]), torch.tensor([-7.0]), torch.tensor([128 / 255]))
    assert torch.isfinite(far).all() and far.item() < -100


def test_representations() -> None:
    images = torch.tensor([[0.0, 0.5, 1.0]])
    noise = torch.tensor([[0.3, 0.3, 0.999]])
    assert represent(images, noise, "bernoulli").tolist() == [[0.0, 1.0, 1.0]]
    deq = represent(images, noise, "gaussian_diag")
    assert torch.allclose(deq, (noise + torch.round(images * 255)) / 256)
    assert torch.allclose(represent(images, None, "logistic"), torch.round(images * 255) / 255)
