"""The audit API the workers and the local CLI call (see docs/architecture.md and docs/science.md).

A job = units of fold models (``plan_units``) trained by ``train_unit`` into ``UnitResult``s,
then ``combine``d into per-sample scores. ``run_audit`` does all of it in-process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.config import AuditConfig, ModelConfig, TrainConfig
from models.device_data import PixelStore, fixed_representation
from models.folds import Scores, combine, fold_assignment, fold_sizes
from models.noise import Purpose, blocked_noise
from models.precision import policy_for
from models.results import UnitResult, load_unit, save_unit, unit_environment
from models.training import Cancelled, FitContext, ProgressEvent, StackOutcome, fit_stack
from models.units import (
    OUT_OF_MEMORY,
    default_budget_bytes,
    device_name,
    is_cache_bytes,
    plan_units,
    release_memory,
    resolve_device,
)

__all__ = [
    "AuditResult",
    "Cancelled",
    "ProgressEvent",
    "Scores",
    "UnitResult",
    "UnitTooLarge",
    "combine",
    "fold_assignment",
    "load_unit",
    "plan_units",
    "resolve_device",
    "run_audit",
    "sample_images",
    "save_unit",
    "train_unit",
]

QUANTILES = (0.5, 0.95, 0.999)
log = logging.getLogger(__name__)


def _check_images(images: np.ndarray, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name}: expected an array (N, C, H, W); got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    if images.dtype == np.uint8:  # 8-bit levels 0..255, read as k / 255
        return
    if images.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8 levels or float intensities; got {images.dtype}")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name}: values must be finite and within [0, 1]")


def eval_epochs(epochs: int, eval_every: int | None) -> list[int]:
    """Epochs (1-based) after which IS runs: every `eval_every` and always the last one."""
    every = eval_every or epochs
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def generated_per_model(audit_cfg: AuditConfig, heldout: np.ndarray | None) -> int:
    wanted = audit_cfg.n_generated
    if wanted is None:
        wanted = 0 if heldout is None else len(heldout)
    return math.ceil(wanted / audit_cfg.n_models)


def _context(
    images: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audit_cfg: AuditConfig,
    device: torch.device,
    heldout: np.ndarray | None,
) -> FitContext:
    n, seed, latent = images.shape[0], audit_cfg.seed, model_cfg.latent
    data = PixelStore.from_array(images, device)
    external = None if heldout is None else PixelStore.from_array(heldout, device)
    return FitContext(
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        audit_cfg=audit_cfg,
        device=device,
        data=data,
        folds_of=fold_assignment(n, audit_cfg.folds, audit_cfg.repeats, seed),
        eval_repr=fixed_representation(data, model_cfg.likelihood, seed, 0),
        heldout_eps=blocked_noise("randn", (seed, Purpose.HELDOUT_EPS, 0), 0, n, (latent,), device),
        external_repr=None
        if external is None
        else fixed_representation(external, model_cfg.likelihood, seed, 1),
        external_eps=None
        if external is None
        else blocked_noise("randn", (seed, Purpose.HELDOUT_EPS, 1), 0, external.count, (latent,), device),
        n_used=n - int(fold_sizes(n, audit_cfg.folds).max()),
        eval_epochs=eval_epochs(train_cfg.epochs, audit_cfg.eval_every),
        generate_per_model=generated_per_model(audit_cfg, heldout),
        budget_bytes=audit_cfg.is_chunk_bytes or default_budget_bytes(device),
        is_cache_bytes=is_cache_bytes(device),
    )


def train_unit(
    images: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audit_cfg: AuditConfig,
    model_ids: Sequence[int],
    *,
    device: torch.device,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    heldout: np.ndarray | None = None,
) -> UnitResult:
    """Train and evaluate the given fold models on `images` (N, C, H, W): float intensities in [0, 1], or
    uint8 levels 0..255 read as k / 255 (the same numbers, in a quarter of the memory).

    `heldout` (optional, same C, H, W): an external held-out set whose -ELBO is tracked per epoch and
    whose size sets how many images the models generate (see AuditConfig.n_generated).
    """
    _check_images(images, "images")
    if heldout is not None:
        _check_images(heldout, "heldout")
        if heldout.shape[1:] != images.shape[1:]:
            raise ValueError(f"heldout: image shape {heldout.shape[1:]} differs from the training set's")
    ids = [int(m) for m in model_ids]
    if not ids or min(ids) < 0 or max(ids) >= audit_cfg.n_models:
        raise ValueError(f"model_ids: must be within 0..{audit_cfg.n_models - 1}; got {ids}")
    if audit_cfg.folds > images.shape[0]:
        raise ValueError(f"folds: must not exceed the number of samples ({images.shape[0]})")
    ctx = _context(images, model_cfg, train_cfg, audit_cfg, device, heldout)
    ctx.progress, ctx.should_stop = progress, should_stop
    with _deterministic(device):
        if audit_cfg.strategy == "batched":
            outcomes = _fit_in_groups(ctx, ids)
        else:
            outcomes = [fit_stack(ctx, [m], batched=False) for m in ids]
    return _unit_result(outcomes, ctx, model_cfg, train_cfg, audit_cfg, device)


def _fit_in_groups(ctx: FitContext, ids: list[int]) -> list[StackOutcome]:
    """The unit as one stack; a stack that runs out of device memory is retrained as two halves.

    Exact: a model's training does not depend on which models share its stack (batched == sequential),
    so splitting changes no number, and a unit that does not fit finishes instead of failing (or being
    retried at the same size forever). One model that does not fit alone is an error that says so."""
    try:
        return [fit_stack(ctx, ids, batched=True)]
    except OUT_OF_MEMORY as error:
        if len(ids) == 1:
            raise UnitTooLarge(
                f"model {ids[0]} does not fit in {ctx.device} memory even alone "
                f"(batch size {ctx.train_cfg.batch_size}, images {ctx.image_shape})"
            ) from error
    release_memory(ctx.device)  # outside the handler: the failed stack's tensors are gone by now
    half = (len(ids) + 1) // 2
    log.warning("models %s did not fit in %s memory; training them in two groups", ids, ctx.device)
    return _fit_in_groups(ctx, ids[:half]) + _fit_in_groups(ctx, ids[half:])


class UnitTooLarge(RuntimeError):
    """Raised when a single fold model does not fit on the unit's device."""


class _deterministic:
    """cuDNN picks deterministic kernels inside (grouped conv backward is not by default)."""

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cuda"
        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)

    def __enter__(self) -> None:
        if self.active:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.saved


def _unit_result(
    outcomes: list[StackOutcome],
    ctx: FitContext,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audit_cfg: AuditConfig,
    device: torch.device,
) -> UnitResult:
    def cat(name: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([getattr(o, name) for o in outcomes], axis=axis)

    train_s = sum(o.train_seconds for o in outcomes)
    is_s = sum(o.is_seconds for o in outcomes)
    model_steps = sum(o.steps * len(o.model_ids) for o in outcomes)
    passes = sum(o.decoder_passes for o in outcomes)
    has_eval = audit_cfg.eval_every is not None
    return UnitResult(
        model_ids=np.array([m for o in outcomes for m in o.model_ids], dtype=np.int64),
        loglik=cat("loglik"),
        eval_epochs=np.array(ctx.eval_epochs if has_eval else [], dtype=np.int64),
        epoch_loglik=cat("epoch_loglik", axis=1) if has_eval else None,
        train_loss=cat("train_loss"),
        heldout_loss=cat("heldout_loss"),
        external_loss=None if outcomes[0].external_loss is None else cat("external_loss"),
        samples=None if outcomes[0].samples is None else cat("samples"),
        timings={
            "train_seconds": train_s,
            "is_seconds": is_s,
            "per_model_step_ms": 1e3 * train_s / max(model_steps, 1),
            "model_steps": float(model_steps),
            "decoder_passes_per_second": passes / is_s if is_s > 0 else 0.0,
        },
        device=str(device),
        device_name=device_name(device),
        precision=policy_for(device),
        stacks=len(outcomes),
        model_config=model_cfg.to_dict(),
        train_config=train_cfg.to_dict(),
        audit_config=audit_cfg.to_dict(),
    )


@dataclass
class AuditResult:
    scores: Scores
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
    environment: dict[str, Any] = field(default_factory=dict)  # models.results.unit_environment


def m_quantiles(scores: Scores) -> np.ndarray:
    return np.nanquantile(scores.M, QUANTILES) if np.isfinite(scores.M).any() else np.full(3, np.nan)


def sample_images(samples_per_model: np.ndarray, n: int) -> np.ndarray:
    """n generated images pooled from all fold models, round-robin over the models (model-id order)
    so every model contributes equally: (E, k, C, H, W) -> (n, C, H, W)."""
    pooled = np.swapaxes(samples_per_model, 0, 1).reshape(-1, *samples_per_model.shape[2:])
    if n > len(pooled):
        raise ValueError(f"n_generated: asked for {n} images, the models generated {len(pooled)}")
    return pooled[:n]


def run_audit(
    images: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audit_cfg: AuditConfig,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    heldout: np.ndarray | None = None,
) -> AuditResult:
    """The whole audit in-process: every unit, then the combination."""
    device = resolve_device(audit_cfg.device)
    started = time.perf_counter()
    units = plan_units(
        model_cfg, audit_cfg, images.shape[0], tuple(images.shape[1:]), device, train_cfg.batch_size
    )
    results = [
        train_unit(
            images,
            model_cfg,
            train_cfg,
            audit_cfg,
            ids,
            device=device,
            progress=progress,
            should_stop=should_stop,
            heldout=heldout,
        )
        for ids in units
    ]
    n_heldout = None if heldout is None else len(heldout)
    return assemble(results, images.shape[0], audit_cfg, n_heldout, time.perf_counter() - started)


def assemble(
    results: Sequence[UnitResult], n: int, audit_cfg: AuditConfig, n_heldout: int | None, wall: float
) -> AuditResult:
    """Combine finished units (any order) into the audit's result; `wall` is reported as wall_seconds.

    Generated samples: `n_generated` of them, or n_heldout = |H| when unset; with neither, all pooled samples
    (each model made ceil(|H| / (K*L)), so that is at least |H|)."""
    order = np.argsort(np.concatenate([r.model_ids for r in results]))

    def cat(name: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results], axis=axis)

    model_ids, loglik = cat("model_ids")[order], cat("loglik")[order]
    folds_of = fold_assignment(n, audit_cfg.folds, audit_cfg.repeats, audit_cfg.seed)
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
        environment=unit_environment(results),
        config={
            "model": results[0].model_config,
            "train": results[0].train_config,
            "audit": audit_cfg.to_dict(),
        },
    )


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
