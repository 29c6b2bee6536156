"""The batched ensemble and the sequential strategy train the same models and give the same scores.

In float64 the two agree to ~1e-9 nats (only summation order differs); in float32 the tiny rounding
differences are amplified by training, so a looser 1e-2 nats bound is used there.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.audit import AuditResult, run_audit
from models.config import AuditConfig, ModelConfig, TrainConfig


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:90] / 16.0).astype(np.float32)[:, None]  # (90, 1, 8, 8)


def _audit(images: np.ndarray, model_cfg: ModelConfig, strategy: str, **audit: object) -> AuditResult:
    cfg = AuditConfig(folds=3, repeats=2, is_samples=8, strategy=strategy, device="cpu", **audit)  # type: ignore[arg-type]
    return run_audit(images, model_cfg, TrainConfig(epochs=3, batch_size=16), cfg)


def _assert_same(a: AuditResult, b: AuditResult, atol: float) -> None:
    np.testing.assert_allclose(a.loglik, b.loglik, atol=atol, rtol=0)
    np.testing.assert_allclose(a.scores.M, b.scores.M, atol=atol, rtol=0)
    np.testing.assert_allclose(a.train_loss, b.train_loss, atol=atol, rtol=0)
    np.testing.assert_allclose(a.heldout_loss, b.heldout_loss, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "model_cfg",
    [
        ModelConfig(hidden=(32, 16), latent=4, likelihood="bernoulli"),
        ModelConfig(hidden=(32,), latent=3, likelihood="gaussian_const"),
        ModelConfig(arch="conv", base_filters=4, latent=4, likelihood="gaussian_diag"),
        ModelConfig(arch="conv", base_filters=4, latent=4, likelihood="logistic"),
        ModelConfig(arch="conv", base_filters=4, latent=3, likelihood="gaussian_const", pad_to=16),
    ],
    ids=["mlp-bernoulli", "mlp-gaussian-const", "conv-gaussian-diag", "conv-logistic", "conv-const-pad16"],
)
def test_batched_equals_sequential_in_float64(
    float64: None, digits: np.ndarray, model_cfg: ModelConfig
) -> None:
    batched = _audit(digits, model_cfg, "batched", eval_every=2)
    sequential = _audit(digits, model_cfg, "sequential", eval_every=2)
    _assert_same(batched, sequential, atol=1e-8)
    np.testing.assert_allclose(batched.epoch_quantiles, sequential.epoch_quantiles, atol=1e-8)
    assert np.isfinite(batched.scores.M).all()


def test_batched_equals_sequential_in_float32(digits: np.ndarray) -> None:
    cfg = ModelConfig(hidden=(32, 16), latent=4)
    _assert_same(_audit(digits, cfg, "batched"), _audit(digits, cfg, "sequential"), atol=1e-2)


def test_unit_split_does_not_change_the_models(float64: None, digits: np.ndarray) -> None:
    cfg = ModelConfig(hidden=(32, 16), latent=4)
    whole = _audit(digits, cfg, "batched", models_per_unit=6)
    pieces = _audit(digits, cfg, "batched", models_per_unit=4)  # units of 3 models
    _assert_same(whole, pieces, atol=1e-8)


def test_same_seed_same_scores_other_seed_other_scores(digits: np.ndarray) -> None:
    cfg = ModelConfig(hidden=(32, 16), latent=4)
    first, again = _audit(digits, cfg, "batched"), _audit(digits, cfg, "batched")
    np.testing.assert_array_equal(first.loglik, again.loglik)
    other = _audit(digits, cfg, "batched", seed=1)
    assert not np.allclose(first.scores.M, other.scores.M)


def test_redraw_evaluation_noise_is_the_reference_behaviour() -> None:
    images = (load_digits().images[:300] / 16.0).astype(np.float32)[:, None]
    model_cfg, train_cfg = ModelConfig(hidden=(64, 32), latent=8), TrainConfig(epochs=20, batch_size=32)

    def audit(noise: str) -> AuditResult:
        cfg = AuditConfig(folds=3, repeats=2, is_samples=8, eval_noise=noise, device="cpu")  # type: ignore[arg-type]
        return run_audit(images, model_cfg, train_cfg, cfg)

    fixed, redraw = audit("fixed"), audit("redraw")
    np.testing.assert_array_equal(fixed.train_loss, redraw.train_loss)  # training is untouched
    # re-drawn binarizations add independent noise to every model's estimate and swamp M
    # (measured: std of M 0.42 fixed vs 2.2 re-drawn)
    assert np.nanstd(redraw.scores.M) > 2 * np.nanstd(fixed.scores.M)
