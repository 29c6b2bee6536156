"""The presets fill in the paper's settings (issue 11), and each preset's network trains and scores."""

from __future__ import annotations

import numpy as np
import pytest

from models.audit import run_audit
from models.config import (
    PRESET_NAMES,
    PRESETS,
    AuditConfig,
    ModelConfig,
    TrainConfig,
    configs_from_preset,
)
from models.networks import count_parameters


def test_presets_are_the_papers_settings() -> None:
    expected = {
        "mnist": ("mlp", 16, "bernoulli", 256, 100, 32),
        "cifar10": ("conv", 64, "gaussian_diag", 128, 100, None),
        "celeba": ("conv", 32, "gaussian_const", 128, 50, None),
    }
    assert set(PRESET_NAMES) == set(expected)
    for name, (arch, latent, likelihood, samples, epochs, pad_to) in expected.items():
        model, train, audit = configs_from_preset(name)
        got = (model.arch, model.latent, model.likelihood, model.pad_to)
        assert got == (arch, latent, likelihood, pad_to)
        assert (audit.is_samples, train.epochs, audit.folds, audit.repeats) == (samples, epochs, 10, 10)
        assert (train.lr, train.batch_size, model.base_filters) == (1e-3, 64, 32)


def test_explicit_fields_override_a_preset_and_no_preset_is_the_defaults() -> None:
    model, train, audit = configs_from_preset("cifar10", {"latent": 8}, {"epochs": 3}, {"repeats": 2})
    assert (model.latent, model.likelihood, train.epochs, audit.repeats) == (8, "gaussian_diag", 3, 2)
    assert configs_from_preset(None) == (ModelConfig(), TrainConfig(), AuditConfig())
    with pytest.raises(ValueError, match="preset"):
        configs_from_preset("svhn")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "shape"), [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32)), ("celeba", (3, 32, 32))]
)
def test_each_preset_network_trains_and_scores_in_float64(
    float64: None, preset: str, shape: tuple[int, int, int]
) -> None:
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, size=(12, *shape)) / 255.0).astype(np.float64)  # 8-bit levels
    model_cfg, _, _ = configs_from_preset(preset)
    train_cfg = TrainConfig(epochs=1, batch_size=4)
    audit_cfg = AuditConfig(folds=2, repeats=2, is_samples=2, device="cpu", models_per_unit=2)
    result = run_audit(images, model_cfg, train_cfg, audit_cfg)
    assert np.isfinite(result.loglik).all() and np.isfinite(result.scores.M).all()
    assert result.loglik.dtype == np.float64 and np.isfinite(result.train_loss).all()
    assert result.model_parameters == count_parameters(model_cfg, shape)
    if preset == "cifar10":
        assert result.model_parameters == 1_579_456
    assert np.isfinite(result.score_se).all() and len(result.stability) == 1
    assert PRESETS[preset]["model"]["likelihood"] == result.config["model"]["likelihood"]
