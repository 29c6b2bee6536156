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


@pytest.mark.parametrize(
    ("models", "sign_models", "batch", "latents", "pixels"),
    [(3, 1, 5, 200, 300), (2, 2, 9, 256, 784), (1, 1, 1, 3, 1024)],
)
def test_tiled_bernoulli_score_equals_the_one_pass_softplus(
    models: int, sign_models: int, batch: int, latents: int, pixels: int
) -> None:
    """The CPU path scores -sum softplus(sign l) in L2-sized tiles from relu + log sigmoid(|l|); it must
    equal the one-pass softplus for logits of any size (here up to +-300, where exp overflows) and for
    signs shared by all models (E=1) or per model, across several tiles and a partial last one."""
    from models.importance import _TILE_FLOATS, _bernoulli_tiled

    generator = torch.Generator().manual_seed(pixels)
    logits = torch.randn(models, batch, latents, pixels, generator=generator) * 12
    logits[..., :4] = torch.tensor([300.0, -300.0, 0.0, 89.0])
    x = torch.rand(sign_models, batch, 1, pixels, generator=generator) < 0.3
    sign = 1.0 - 2.0 * x.double()
    expected = -torch.nn.functional.softplus(logits * sign).sum(-1)
    assert _TILE_FLOATS // (latents * pixels) < batch or batch == 1  # several tiles, or one sample per tile
    got = _bernoulli_tiled(logits.float().clone(), sign.float())
    assert got.shape == (models, batch, latents) and torch.isfinite(got).all()
    np.testing.assert_allclose(got.double().numpy(), expected.numpy(), rtol=2e-6, atol=2e-3)


def test_cpu_importance_sampling_with_tiles_equals_the_untiled_estimate() -> None:
    """importance_log_likelihood with a cache cap (the CPU path, tiled Bernoulli scoring at >= 256 px)
    gives the estimate of the plain path (no cap) for a stack of real MLP VAEs at 28 x 28."""
    from models.config import ModelConfig
    from models.ensemble import stack_models
    from models.networks import build_vae

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    stack = stack_models([build_vae(ModelConfig(), (1, 28, 28), init_seed=seed) for seed in range(3)])
    images = (torch.rand(1, 70, 1, 28, 28) < 0.2).float()
    noise = torch.randn(3, 70, 32, stack.latent)

    def estimate(cache_bytes: int | None) -> np.ndarray:
        return importance_log_likelihood(
            stack, 70, 784, lambda a, b: images[:, a:b], lambda a, b: noise[:, a:b], "bernoulli", 32,
            budget_bytes=2**26, cache_bytes=cache_bytes,
        ).numpy()  # fmt: skip

    np.testing.assert_allclose(estimate(2**20), estimate(None), rtol=1e-5, atol=1e-3)
