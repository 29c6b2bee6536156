"""Combining finished units into an audit's result (SPEC §1 step 4, §7): ``assemble`` and ``AuditResult``.

Units can come from any process and in any order (the service's finishing step loads them from their
artifacts); ``models.audit.run_audit`` calls the same function on the units it trained in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.config import AuditConfig
from models.folds import Scores, combine, fold_assignment
from models.results import UnitResult, unit_environment
from models.uncertainty import Uncertainty, assess, stable_repetitions

QUANTILES = (0.5, 0.95, 0.999)


@dataclass
class AuditResult:
    """The combined audit. With the adaptive stop, model-indexed arrays cover the repetitions used."""

    scores: Scores
    uncertainty: Uncertainty  # SPEC §7: bootstrap interval, confidently memorized, ranking stability
    folds_of: np.ndarray  # (L, N)
    model_ids: np.ndarray  # (K*L,) sorted
    loglik: np.ndarray  # (K*L, N)
    quantiles: dict[str, float]  # of M at the final epoch, keys "0.5", "0.95", "0.999"
    eval_epochs: np.ndarray  # (E,) empty without eval_every
    epoch_quantiles: np.ndarray  # (E, 3) quantiles of M after each evaluated epoch
    train_loss: np.ndarray  # (K*L, epochs)
    heldout_loss: np.ndarray  # (K*L, epochs) -ELBO on each model's held-out fold
    samples: np.ndarray | None  # (n_generated, C, H, W), see sample_images
    timings: dict[str, float]
    device: str
    config: dict[str, dict[str, object]] = field(default_factory=dict)
    model_parameters: int | None = None  # learned parameters of one fold model
    environment: dict[str, Any] = field(default_factory=dict)  # models.results.unit_environment

    @property
    def score_se(self) -> np.ndarray:  # (N,) bootstrap standard error of M; NaN when L = 1
        return self.uncertainty.score_se

    @property
    def score_lo(self) -> np.ndarray:  # (N,) 5% percentile of the bootstrap M
        return self.uncertainty.score_lo

    @property
    def score_hi(self) -> np.ndarray:  # (N,) 95% percentile of the bootstrap M
        return self.uncertainty.score_hi

    @property
    def confident(self) -> np.ndarray:  # (N,) bool: score_lo above the 0.95 quantile of M
        return self.uncertainty.confident

    @property
    def n_confident(self) -> int | None:  # None when L = 1
        return self.uncertainty.n_confident

    @property
    def stability(self) -> list[float]:  # top-k overlap of repetitions 1..l vs 1..l-1, l = 2..L
        return self.uncertainty.stability

    @property
    def repeats_used(self) -> int:
        return self.uncertainty.repeats


def m_quantiles(scores: Scores) -> np.ndarray:
    return np.nanquantile(scores.M, QUANTILES) if np.isfinite(scores.M).any() else np.full(3, np.nan)


def sample_images(samples_per_model: np.ndarray, n: int) -> np.ndarray:
    """n generated images pooled from all fold models, round-robin over the models (model-id order)
    so every model contributes equally: (E, k, C, H, W) -> (n, C, H, W)."""
    pooled = np.swapaxes(samples_per_model, 0, 1).reshape(-1, *samples_per_model.shape[2:])
    if n > len(pooled):
        raise ValueError(f"n_generated: asked for {n} images, the models generated {len(pooled)}")
    return pooled[:n]


def assemble(
    results: Sequence[UnitResult], n: int, audit_cfg: AuditConfig, n_heldout: int | None, wall: float
) -> AuditResult:
    """Combine finished units (any order) into the audit's result; `wall` is reported as wall_seconds.

    With ``stop_when_stable`` only the repetitions the adaptive stop keeps are combined, whether the
    later ones were never trained (``run_audit``) or were (a service that trained every unit): the
    same config gives the same scores either way.
    Generated samples: `n_generated` of them, or n_heldout = |H| when unset; with neither, all pooled samples
    (each model made ceil(|H| / (K*L)), so that is at least |H|)."""
    order = np.argsort(np.concatenate([r.model_ids for r in results]))

    def cat(name: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results], axis=axis)

    model_ids, loglik = cat("model_ids")[order], cat("loglik")[order]
    folds_of = fold_assignment(n, audit_cfg.folds, audit_cfg.repeats, audit_cfg.seed)
    used = _models_used(folds_of, model_ids, loglik, audit_cfg)
    order, model_ids, loglik = order[used], model_ids[used], loglik[used]
    scores = combine(folds_of, model_ids, loglik)
    epochs = results[0].eval_epochs
    epoch_q = np.empty((0, 3))
    if results[0].epoch_loglik is not None:
        per_epoch = cat("epoch_loglik", axis=1)[:, order]
        epoch_q = np.stack([m_quantiles(combine(folds_of, model_ids, ll)) for ll in per_epoch])
    samples = None
    if results[0].samples is not None:
        pooled = cat("samples")[order]
        wanted = audit_cfg.n_generated
        if wanted is None:  # |S| = |H|; without H at hand keep everything the models generated
            wanted = pooled.shape[0] * pooled.shape[1] if n_heldout is None else n_heldout
        samples = sample_images(pooled, wanted)
    return AuditResult(
        scores=scores,
        uncertainty=assess(folds_of, model_ids, loglik, scores.M, seed=audit_cfg.seed),
        folds_of=folds_of,
        model_ids=model_ids,
        loglik=loglik,
        quantiles=dict(
            zip((str(q) for q in QUANTILES), (float(v) for v in m_quantiles(scores)), strict=True)
        ),
        eval_epochs=epochs,
        epoch_quantiles=epoch_q,
        train_loss=cat("train_loss")[order],
        heldout_loss=cat("heldout_loss")[order],
        samples=samples,
        timings=_total_timings(results, wall),
        device=results[0].device,
        model_parameters=results[0].model_parameters,
        environment=unit_environment(results),
        config={
            "model": results[0].model_config,
            "train": results[0].train_config,
            "audit": audit_cfg.to_dict(),
        },
    )


def _models_used(
    folds_of: np.ndarray, model_ids: np.ndarray, loglik: np.ndarray, audit_cfg: AuditConfig
) -> np.ndarray:
    """Mask over the (sorted) models: all of them, or the first repetitions the adaptive stop keeps."""
    keep = np.ones(len(model_ids), dtype=bool)
    if audit_cfg.stop_when_stable is None:
        return keep
    repeats = stable_repetitions(folds_of, model_ids, loglik, audit_cfg.stop_when_stable)
    return keep if repeats is None else model_ids < repeats * audit_cfg.folds


def _total_timings(results: Sequence[UnitResult], wall: float) -> dict[str, float]:
    train_s = sum(r.timings["train_seconds"] for r in results)
    is_s = sum(r.timings["is_seconds"] for r in results)
    passes = sum(r.timings["decoder_passes_per_second"] * r.timings["is_seconds"] for r in results)
    steps = sum(r.timings["model_steps"] for r in results)
    step_ms = 1e3 * train_s / max(steps, 1.0)
    return {
        "wall_seconds": wall,
        "train_seconds": train_s,
        "is_seconds": is_s,
        "per_model_step_ms": step_ms,
        "decoder_passes_per_second": passes / is_s if is_s > 0 else 0.0,
    }
