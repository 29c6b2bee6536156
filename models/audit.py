"""The audit API the workers and the local CLI call (see docs/architecture.md and docs/science.md).

A job = units of fold models (``plan_units``) trained by ``train_unit`` into ``UnitResult``s,
then ``combine``d into per-sample scores. ``run_audit`` does all of it in-process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.assembly import AuditResult, assemble, sample_images
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.device_data import PixelStore, fixed_representation
from models.folds import Scores, combine, fold_assignment, fold_sizes
from models.networks import count_parameters, crop_images, model_input_shape, pad_images
from models.noise import Purpose, blocked_noise
from models.precision import policy_for
from models.results import UnitResult, load_unit, save_unit
from models.training import Cancelled, FitContext, ProgressEvent, StackOutcome, fit_stack
from models.uncertainty import Uncertainty, stable_repetitions
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
    "Uncertainty",
    "UnitResult",
    "UnitTooLarge",
    "assemble",
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
    """Images each fold model generates: enough for `n_generated` from all K*L models, or, with the
    adaptive stop (which may keep only some repetitions), from the K models of any one repetition."""
    wanted = audit_cfg.n_generated
    if wanted is None:
        wanted = 0 if heldout is None else len(heldout)
    sources = audit_cfg.folds if audit_cfg.stop_when_stable is not None else audit_cfg.n_models
    return math.ceil(wanted / sources)


def _image_shape(images: np.ndarray) -> tuple[int, int, int]:
    return int(images.shape[1]), int(images.shape[2]), int(images.shape[3])


def _context(
    images: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audit_cfg: AuditConfig,
    device: torch.device,
    heldout: np.ndarray | None,
) -> FitContext:
    n, seed, latent = images.shape[0], audit_cfg.seed, model_cfg.latent
    _, height, width = model_input_shape(model_cfg, _image_shape(images))

    def on_device(array: np.ndarray) -> PixelStore:  # padded to the model's input (pad_to)
        if array.shape[2:] != (height, width):
            padded = pad_images(torch.from_numpy(np.ascontiguousarray(array)), height, width)
            array = padded.numpy()
        return PixelStore.from_array(array, device)

    data = on_device(images)
    external = None if heldout is None else on_device(heldout)
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
    return _unit_result(outcomes, ctx, model_cfg, train_cfg, audit_cfg, device, _image_shape(images))


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
    image_shape: tuple[int, int, int],
) -> UnitResult:
    def cat(name: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([getattr(o, name) for o in outcomes], axis=axis)

    samples = None
    if outcomes[0].samples is not None:  # generated on the model's canvas; back to the images' size
        samples = crop_images(torch.from_numpy(cat("samples")), *image_shape[1:]).contiguous().numpy()

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
        samples=samples,
        timings={
            "train_seconds": train_s,
            "is_seconds": is_s,
            "per_model_step_ms": 1e3 * train_s / max(model_steps, 1),
            "model_steps": float(model_steps),
            "decoder_passes_per_second": passes / is_s if is_s > 0 else 0.0,
        },
        device=str(device),
        model_parameters=count_parameters(model_cfg, image_shape),
        device_name=device_name(device),
        precision=policy_for(device),
        stacks=len(outcomes),
        model_config=model_cfg.to_dict(),
        train_config=train_cfg.to_dict(),
        audit_config=audit_cfg.to_dict(),
    )


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
    """The whole audit in-process: every unit, then the combination.

    With ``stop_when_stable`` the units are trained repetition by repetition (a unit spanning two
    repetitions is split at the boundary, which changes no model) and training stops as soon as the
    ranking is stable (SPEC §7)."""
    device = resolve_device(audit_cfg.device)
    started = time.perf_counter()
    units = plan_units(
        model_cfg, audit_cfg, images.shape[0], tuple(images.shape[1:]), device, train_cfg.batch_size
    )

    def train(ids: Sequence[int]) -> UnitResult:
        return train_unit(
            images, model_cfg, train_cfg, audit_cfg, ids,
            device=device, progress=progress, should_stop=should_stop, heldout=heldout,
        )  # fmt: skip

    if audit_cfg.stop_when_stable is None:
        results = [train(ids) for ids in units]
    else:
        results = _train_until_stable(images.shape[0], audit_cfg, units, train)
    n_heldout = None if heldout is None else len(heldout)
    return assemble(results, images.shape[0], audit_cfg, n_heldout, time.perf_counter() - started)


def _train_until_stable(
    n: int, audit_cfg: AuditConfig, units: list[list[int]], train: Callable[[Sequence[int]], UnitResult]
) -> list[UnitResult]:
    assert audit_cfg.stop_when_stable is not None
    folds_of = fold_assignment(n, audit_cfg.folds, audit_cfg.repeats, audit_cfg.seed)
    results: list[UnitResult] = []
    for rep in range(audit_cfg.repeats):
        first, last = rep * audit_cfg.folds, (rep + 1) * audit_cfg.folds
        for unit in units:
            ids = [m for m in unit if first <= m < last]
            if ids:
                results.append(train(ids))
        model_ids = np.concatenate([r.model_ids for r in results])
        loglik = np.concatenate([r.loglik for r in results])
        if stable_repetitions(folds_of, model_ids, loglik, audit_cfg.stop_when_stable) is not None:
            break
    return results


