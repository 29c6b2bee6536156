"""Importance sampling against the closed form of a linear-Gaussian VAE (SPEC §2).

Decoder: y = logit(lambda + (1 - 2 lambda) x) ~ N(W z + b, s^2 I), z ~ N(0, I), scored with the
`gaussian_const` likelihood, so the true log p(x) is log N(y; b, W W^T + s^2 I) plus the change of
variables. Tolerances: with the exact posterior as encoder every importance weight equals p(x), so
any S is exact (1e-8 nats in float64); with a deliberately wrong encoder the error shrinks as S grows
and is below 0.05 nats at S = 8192 for these 6-pixel, 2-latent models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy import stats

from models.ensemble import ModelStack
from models.importance import importance_log_likelihood, plan_chunks
from models.likelihoods import LOGIT_LAMBDA, to_logit_space
from models.noise import Purpose, blocked_noise

D, Z = 6, 2


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class LinearGaussianStack(ModelStack):
    """One linear-Gaussian VAE; the encoder is the exact posterior, optionally distorted."""

    def __init__(
        self, weight: np.ndarray, bias: np.ndarray, log_var: float, shift: float, stretch: float
    ) -> None:
        super().__init__()
        self.n_models, self.latent, self.planes, self.decoder_floats = 1, Z, 1, D
        self.weight, self.bias = torch.tensor(weight), torch.tensor(bias)  # (D, Z), (D,)
        self.log_var = torch.tensor([log_var])
        self.shift, self.stretch = shift, stretch

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = to_logit_space(x.flatten(2))  # (E, B, D)
        noise_var = math.exp(self.log_var.item())
        precision = torch.eye(Z) + self.weight.T @ self.weight / noise_var  # diagonal: orthogonal columns
        cov = torch.linalg.inv(precision)
        mean = (y - self.bias) @ self.weight @ cov / noise_var  # (E, B, Z)
        log_var = torch.log(torch.diagonal(cov)).expand_as(mean)
        return mean + self.shift, log_var + 2 * math.log(self.stretch)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T + self.bias).unsqueeze(-2)  # (E, B, 1, D)

    def const_log_var(self) -> torch.Tensor:
        return self.log_var


def _model(shift: float = 0.0, stretch: float = 1.0) -> LinearGaussianStack:
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    weight = q[:, :Z] * np.array([1.5, 0.7])  # orthogonal columns: the exact posterior is diagonal
    return LinearGaussianStack(
        weight, rng.normal(0, 0.3, D), log_var=math.log(0.2), shift=shift, stretch=stretch
    )


def _data(n: int = 5) -> torch.Tensor:
    rng = np.random.default_rng(7)
    return torch.tensor(rng.uniform(0.05, 0.95, size=(n, 1, 2, 3)))  # (N, C, H, W), D = 6


def _closed_form(model: LinearGaussianStack, x: torch.Tensor) -> np.ndarray:
    y = to_logit_space(x.flatten(1)).numpy()
    w, b = model.weight.numpy(), model.bias.numpy()
    cov = w @ w.T + math.exp(model.log_var.item()) * np.eye(D)
    log_p_y = stats.multivariate_normal(b, cov).logpdf(y)
    jacobian = D * math.log(1 - 2 * LOGIT_LAMBDA) - D * math.log(256) - (y - 2 * np.logaddexp(0, y)).sum(1)
    return np.asarray(log_p_y + jacobian)


def _estimate(
    model: ModelStack, x: torch.Tensor, latents: int, seed: int = 0, budget: int = 2**26
) -> np.ndarray:
    def repr_of(a: int, b: int) -> torch.Tensor:
        return x[a:b].unsqueeze(0)

    def eps_of(a: int, b: int) -> torch.Tensor:
        key = (seed, int(Purpose.EVAL_EPS))
        return blocked_noise("randn", key, a, b, (latents, Z), torch.device("cpu")).unsqueeze(0)

    result = importance_log_likelihood(model, len(x), D, repr_of, eps_of, "gaussian_const", latents, budget)
    return result[0].numpy()


@pytest.mark.parametrize("latents", [1, 64])
def test_exact_posterior_gives_the_closed_form_for_any_number_of_latents(latents: int) -> None:
    model, x = _model(), _data()
    np.testing.assert_allclose(_estimate(model, x, latents), _closed_form(model, x), atol=1e-8)


@pytest.mark.parametrize(("shift", "stretch"), [(0.3, 1.0), (0.0, 0.7), (-0.25, 1.8)])
def test_estimate_converges_for_a_wrong_encoder(shift: float, stretch: float) -> None:
    model, x = _model(shift, stretch), _data()
    truth = _closed_form(model, x)
    errors = {s: np.abs(_estimate(model, x, s, seed=1) - truth).mean() for s in (1, 32, 8192)}
    assert errors[1] > 0.1  # the encoder really is wrong
    assert errors[8192] < errors[32] < errors[1]
    assert errors[8192] < 0.05


def test_single_latent_estimate_is_a_lower_bound_in_expectation() -> None:
    model, x = _model(0.8, 1.3), _data(3)
    truth = _closed_form(model, x)
    draws = np.stack([_estimate(model, x, 1, seed=s) for s in range(200)])
    assert np.all(draws.mean(0) < truth)


def test_chunking_bounds_memory_and_changes_nothing() -> None:
    model, x = _model(0.3, 1.2), _data(150)
    tiny = 3 * 7 * plan_chunks(model, D, 256, 2**30).bytes_per_latent
    plan = plan_chunks(model, D, 256, tiny)
    assert plan.chunk_bytes(model.n_models) <= tiny
    assert plan.latent_chunk < 256  # the latents themselves are split
    np.testing.assert_allclose(_estimate(model, x, 256, budget=tiny), _estimate(model, x, 256), rtol=1e-12)


def test_large_budget_chunks_samples_in_whole_noise_blocks() -> None:
    model = _model()
    plan = plan_chunks(model, D, 16, 2**22)
    assert plan.latent_chunk == 16 and plan.sample_chunk % 64 == 0
    assert plan.chunk_bytes(1) <= 2**22
