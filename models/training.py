"""Training and evaluation of a stack of fold models (one unit of the audit, or one model of it).

The same loop runs a ``StackedMLPVAE``/``StackedConvVAE`` (the batched strategy) and a
``SingleStack`` (the sequential strategy); every random draw is keyed by its purpose and the model
id (``models.noise``), so both strategies produce the same models up to float rounding.

Per epoch every model draws a permutation of its own training indices and takes its first
``n_used`` entries, ``n_used`` being the smallest training-set size of the audit (fold sizes
differ by at most one, so at most one sample per model and epoch is skipped); batches are
``batch_size`` long except the last. All models therefore take the same number of equally sized
steps, which is what lets them share one forward/backward. Training binarization/dequantization
noise and the reparameterisation noise of an epoch are drawn per position in the epoch and shared by
all models, which keeps the noise cost independent of the number of models and the memory of a
step independent of the dataset size (each model still sees fresh noise for every sample and epoch,
because its order is an independent permutation).

Nothing in an epoch waits for the device: data, fixed representations and fold indices live on the
unit's device, per-model losses accumulate there, and the host reads them once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.config import AuditConfig, ModelConfig, TrainConfig
from models.device_data import PixelStore, StoredRepresentation
from models.ensemble import ModelStack, SingleStack, stack_models
from models.folds import heldout_indices, training_indices
from models.importance import importance_log_likelihood
from models.likelihoods import (
    NEEDS_NOISE,
    bernoulli_log_prob_signed,
    decoder_log_prob,
    decoder_mean_image,
    represent,
)
from models.networks import build_vae
from models.noise import Purpose, blocked_noise, derive_seed, generator, to_device
from models.precision import precision_scope
from models.units import OUT_OF_MEMORY, release_memory

MIN_IS_BUDGET_BYTES = 2**20


class Cancelled(Exception):
    """Raised between epochs when ``should_stop()`` returns True."""


@dataclass(frozen=True)
class ProgressEvent:
    model_ids: tuple[int, ...]
    epoch: int  # 1-based epoch just finished (phase "train") or evaluated (phase "eval")
    epochs: int
    phase: str  # "train" | "eval"
    seconds: float  # wall time since the unit started


@dataclass
class FitContext:
    """Everything one unit needs, prepared once on the device."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    audit_cfg: AuditConfig
    device: torch.device
    data: PixelStore  # (N, C, H, W) the training images on the device
    folds_of: np.ndarray  # (L, N)
    eval_repr: StoredRepresentation  # (N, C, H, W) the one seeded representation shared by all models
    heldout_eps: torch.Tensor  # (N, Z) reparameterisation noise of the held-out-fold loss
    external_repr: StoredRepresentation | None  # (H, C, H, W) of an external held-out set
    external_eps: torch.Tensor | None  # (H, Z)
    n_used: int
    eval_epochs: list[int]
    generate_per_model: int
    budget_bytes: int
    is_cache_bytes: int | None = None  # cache cap of an importance-sampling chunk (CPU)
    progress: Callable[[ProgressEvent], None] | None = None
    should_stop: Callable[[], bool] | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def n_samples(self) -> int:
        return self.data.count

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.data.shape[1:]
        return channels, height, width

    @property
    def pixels(self) -> int:
        return math.prod(self.data.shape[1:])


@dataclass
class StackOutcome:
    model_ids: list[int]
    loglik: np.ndarray  # (E, N) at the final epoch
    epoch_loglik: np.ndarray  # (len(eval_epochs), E, N)
    train_loss: np.ndarray  # (E, epochs)
    heldout_loss: np.ndarray  # (E, epochs)
    external_loss: np.ndarray | None  # (E, epochs)
    samples: np.ndarray | None  # (E, n, C, H, W)
    train_seconds: float = 0.0
    is_seconds: float = 0.0
    decoder_passes: int = 0
    steps: int = 0


def negative_elbo(stack: ModelStack, x: torch.Tensor, eps: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-ELBO (nats) per model and sample, (E, b), with analytic KL; x (E, b, C, H, W), eps (E|1, b, Z)."""
    mean, log_var = stack.encode(x)  # (E, b, Z)
    z = mean + torch.exp(0.5 * log_var) * eps
    params = stack.decode(z)  # (E, b, P, D)
    if likelihood == "bernoulli":
        # flatten, not params[..., 0, :]: a view's backward is a view, a select's writes a zero tensor
        log_px = bernoulli_log_prob_signed(params.flatten(-2), torch.rsub(x.flatten(2), 1.0, alpha=2.0))
    else:
        const = stack.const_log_var()
        log_px = decoder_log_prob(params, x.flatten(2), likelihood, None if const is None else const[:, None])
    kl = 0.5 * (mean.pow(2) + torch.exp(log_var) - 1.0 - log_var).sum(-1)
    return kl - log_px


def _build_stack(ctx: FitContext, model_ids: list[int], batched: bool) -> ModelStack:
    models = [
        build_vae(ctx.model_cfg, ctx.image_shape, derive_seed(ctx.audit_cfg.seed, Purpose.INIT, m))
        for m in model_ids
    ]
    stack = stack_models(models) if batched else SingleStack(models[0])
    return stack.to(ctx.device)


def _epoch_order(
    ctx: FitContext, train_sets: list[np.ndarray], order_gens: list[torch.Generator]
) -> torch.Tensor:
    """(E, n_used) sample indices in the order each model visits them this epoch, drawn on the CPU
    (so the order does not depend on the device) and sent to the device once per epoch."""
    rows = [
        torch.from_numpy(idx)[torch.randperm(len(idx), generator=gen)[: ctx.n_used]]
        for idx, gen in zip(train_sets, order_gens, strict=True)
    ]
    return to_device(torch.stack(rows), ctx.device)


def _train_epoch(
    ctx: FitContext, stack: ModelStack, optimizer: torch.optim.Optimizer, order: torch.Tensor, epoch: int
) -> torch.Tensor:
    """One epoch for all models of the stack; returns the mean training -ELBO per model (E,)."""
    seed, likelihood, batch = ctx.audit_cfg.seed, ctx.model_cfg.likelihood, ctx.train_cfg.batch_size
    noise_gen = None
    if NEEDS_NOISE[likelihood]:
        noise_gen = generator(seed, Purpose.TRAIN_NOISE, epoch, device=ctx.device)
    eps_all = torch.randn(
        (ctx.n_used, ctx.model_cfg.latent),
        device=ctx.device,
        generator=generator(seed, Purpose.TRAIN_EPS, epoch, device=ctx.device),
    )
    total = torch.zeros(stack.n_models, device=ctx.device)
    stack.train()
    for start in range(0, ctx.n_used, batch):
        idx = order[:, start : start + batch]  # (E, b)
        noise = None  # (b, C, H, W): noise of these positions, shared by all models
        if noise_gen is not None:
            noise = torch.rand((idx.shape[1], *ctx.image_shape), generator=noise_gen, device=ctx.device)
        x = represent(ctx.data.intensities(idx), noise, likelihood)  # (E, b, C, H, W)
        per_model = negative_elbo(stack, x, eps_all[start : start + batch].unsqueeze(0), likelihood).mean(1)
        optimizer.zero_grad(set_to_none=True)
        per_model.sum().backward()
        optimizer.step()
        total += per_model.detach() * idx.shape[1]
    return total / ctx.n_used


@torch.no_grad()
def _fixed_set_loss(
    ctx: FitContext,
    stack: ModelStack,
    index: torch.Tensor,
    mask: torch.Tensor,
    source: StoredRepresentation,
    eps: torch.Tensor,
) -> torch.Tensor:
    """Mean -ELBO per model (E,) over per-model index sets (E, h) of `source` (masked padding)."""
    stack.eval()
    per_sample = _FLOAT_BYTES_PER_SAMPLE * (stack.decoder_floats + 8 * ctx.pixels)
    chunk = max(1, ctx.budget_bytes // (stack.n_models * per_sample))
    total = torch.zeros(stack.n_models, device=ctx.device)
    for start in range(0, index.shape[1], chunk):
        idx = index[:, start : start + chunk]
        loss = negative_elbo(stack, source.rows(idx), eps[idx], ctx.model_cfg.likelihood)  # (E, b)
        total += (loss * mask[:, start : start + chunk]).sum(1)
    stack.train()
    return total / mask.sum(1)


_FLOAT_BYTES_PER_SAMPLE = 4


def _padded_heldout(ctx: FitContext, model_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out fold indices per model, padded to a rectangle: index (E, h), mask (E, h)."""
    sets = [heldout_indices(ctx.folds_of, m) for m in model_ids]
    width = max(len(s) for s in sets)
    index = np.stack([np.pad(s, (0, width - len(s)), mode="edge") for s in sets])
    mask = np.stack([np.arange(width) < len(s) for s in sets])
    return to_device(torch.from_numpy(index), ctx.device), to_device(
        torch.from_numpy(mask).to(torch.get_default_dtype()), ctx.device
    )


def _repr_and_eps_sources(
    ctx: FitContext, model_ids: list[int], eval_index: int
) -> tuple[Callable[[int, int], torch.Tensor], Callable[[int, int], torch.Tensor]]:
    """Where IS gets its representation and latent noise: shared by all models ("fixed", common random
    numbers) or drawn afresh per model and evaluation ("redraw", the reference behaviour)."""
    cfg, device = ctx.audit_cfg, ctx.device
    tail = (cfg.is_samples, ctx.model_cfg.latent)
    if cfg.eval_noise == "fixed":

        def fixed_repr(a: int, b: int) -> torch.Tensor:
            return ctx.eval_repr.rows(slice(a, b)).unsqueeze(0)

        def fixed_eps(a: int, b: int) -> torch.Tensor:
            return blocked_noise("randn", (cfg.seed, Purpose.EVAL_EPS), a, b, tail, device).unsqueeze(0)

        return fixed_repr, fixed_eps
    shape = ctx.image_shape

    def redraw_repr(a: int, b: int) -> torch.Tensor:
        noise = torch.stack(
            [
                blocked_noise("rand", (cfg.seed, Purpose.EVAL_REPR, m, eval_index), a, b, shape, device)
                for m in model_ids
            ]
        )
        return represent(ctx.data.intensities(slice(a, b)).unsqueeze(0), noise, ctx.model_cfg.likelihood)

    def redraw_eps(a: int, b: int) -> torch.Tensor:
        return torch.stack(
            [
                blocked_noise("randn", (cfg.seed, Purpose.EVAL_EPS, m, eval_index), a, b, tail, device)
                for m in model_ids
            ]
        )

    return redraw_repr, redraw_eps


def _evaluate(ctx: FitContext, stack: ModelStack, model_ids: list[int], eval_index: int) -> np.ndarray:
    """IS log-likelihoods (E, N); a chunk that does not fit halves the chunk budget for the rest of the
    unit and the pass starts over (chunking changes no number)."""
    repr_of, eps_of = _repr_and_eps_sources(ctx, model_ids, eval_index)
    while True:
        try:
            loglik = importance_log_likelihood(
                stack,
                ctx.n_samples,
                ctx.pixels,
                repr_of,
                eps_of,
                ctx.model_cfg.likelihood,
                ctx.audit_cfg.is_samples,
                ctx.budget_bytes,
                ctx.is_cache_bytes,
            )
            return loglik.cpu().numpy()
        except OUT_OF_MEMORY:
            if ctx.budget_bytes <= MIN_IS_BUDGET_BYTES:
                raise
        release_memory(ctx.device)  # outside the handler: the failed pass's tensors are gone by now
        ctx.budget_bytes //= 2


@torch.no_grad()
def _generate(ctx: FitContext, stack: ModelStack, model_ids: list[int]) -> np.ndarray | None:
    """Decoder-mean images from z ~ N(0, I), `generate_per_model` per model: (E, n, C, H, W)."""
    if ctx.generate_per_model == 0:
        return None
    z = torch.stack(
        [
            torch.randn(
                (ctx.generate_per_model, ctx.model_cfg.latent),
                generator=generator(ctx.audit_cfg.seed, Purpose.GENERATE, m),
            )
            for m in model_ids
        ]
    ).to(ctx.device)  # (E, n, Z)
    stack.eval()
    images = decoder_mean_image(stack.decode(z), ctx.model_cfg.likelihood)  # (E, n, D)
    return images.reshape(len(model_ids), ctx.generate_per_model, *ctx.image_shape).cpu().numpy()


def fit_stack(ctx: FitContext, model_ids: list[int], batched: bool) -> StackOutcome:
    """Train the given models together (batched) or a single one, evaluating as configured."""
    stack = _build_stack(ctx, model_ids, batched)
    epochs = ctx.train_cfg.epochs
    # fused: one kernel per parameter tensor; the same arithmetic for stacked and single models
    optimizer = torch.optim.Adam(
        stack.parameters(), lr=ctx.train_cfg.lr, weight_decay=ctx.train_cfg.weight_decay, fused=True
    )
    train_sets = [training_indices(ctx.folds_of, m) for m in model_ids]
    order_gens = [generator(ctx.audit_cfg.seed, Purpose.ORDER, m) for m in model_ids]
    held_index, held_mask = _padded_heldout(ctx, model_ids)
    n = len(model_ids)
    out = StackOutcome(
        model_ids,
        np.empty((n, ctx.n_samples)),
        np.empty((0, n, ctx.n_samples)),
        np.empty((n, epochs)),
        np.empty((n, epochs)),
        None if ctx.external_repr is None else np.empty((n, epochs)),
        None,
    )
    evaluations: list[np.ndarray] = []
    for epoch in range(1, epochs + 1):
        if ctx.should_stop is not None and ctx.should_stop():
            raise Cancelled(f"cancelled before epoch {epoch} of models {model_ids}")
        tick = time.perf_counter()
        with precision_scope(ctx.device, "training"):
            loss = _train_epoch(ctx, stack, optimizer, _epoch_order(ctx, train_sets, order_gens), epoch)
        out.train_loss[:, epoch - 1] = loss.cpu().numpy()  # the epoch's one wait for the device
        out.train_seconds += time.perf_counter() - tick
        out.steps += math.ceil(ctx.n_used / ctx.train_cfg.batch_size)
        with precision_scope(ctx.device, "likelihood"):
            _record_losses(ctx, stack, out, epoch, held_index, held_mask)
        _notify(ctx, model_ids, epoch, "train")
        if epoch in ctx.eval_epochs:
            tick = time.perf_counter()
            with precision_scope(ctx.device, "likelihood"):
                evaluations.append(_evaluate(ctx, stack, model_ids, len(evaluations)))
            out.is_seconds += time.perf_counter() - tick
            out.decoder_passes += n * ctx.n_samples * ctx.audit_cfg.is_samples
            _notify(ctx, model_ids, epoch, "eval")
    out.epoch_loglik = np.stack(evaluations)
    out.loglik = out.epoch_loglik[-1]
    with precision_scope(ctx.device, "likelihood"):
        out.samples = _generate(ctx, stack, model_ids)
    return out


def _record_losses(
    ctx: FitContext,
    stack: ModelStack,
    out: StackOutcome,
    epoch: int,
    held_index: torch.Tensor,
    held_mask: torch.Tensor,
) -> None:
    out.heldout_loss[:, epoch - 1] = (
        _fixed_set_loss(ctx, stack, held_index, held_mask, ctx.eval_repr, ctx.heldout_eps).cpu().numpy()
    )
    if out.external_loss is not None and ctx.external_repr is not None and ctx.external_eps is not None:
        count = ctx.external_repr.count
        index = torch.arange(count, device=ctx.device).expand(stack.n_models, -1)
        mask = torch.ones(index.shape, device=ctx.device)
        out.external_loss[:, epoch - 1] = (
            _fixed_set_loss(ctx, stack, index, mask, ctx.external_repr, ctx.external_eps).cpu().numpy()
        )


def _notify(ctx: FitContext, model_ids: list[int], epoch: int, phase: str) -> None:
    if ctx.progress is not None:
        ctx.progress(
            ProgressEvent(
                tuple(model_ids), epoch, ctx.train_cfg.epochs, phase, time.perf_counter() - ctx.started
            )
        )
