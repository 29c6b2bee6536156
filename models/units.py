"""Devices, memory budgets and the split of an audit's K*L models into units.

A unit is the group of fold models ``train_unit`` trains as one batched ensemble. Its size is
``AuditConfig.models_per_unit`` when set; otherwise the largest size that fits the device: on CUDA
(``cuda_memory_plan``) 90% of the free memory, less the data, less the importance-sampling chunk's
own budget (a quarter of the free memory unless ``is_chunk_bytes`` says), divided by one model's
training footprint at the job's batch size and image size (parameters, gradient and Adam moments,
activations of one minibatch); on CPU at most ``CPU_MODELS_PER_UNIT`` models, except the conv VAE,
which gets units of one model there (docs/benchmarks.md). An estimate can be wrong: ``train_unit``
retrains a stack that runs out of memory in halves, which is exact (batched == sequential).
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass

import torch

from models.config import AuditConfig, ModelConfig, TrainConfig
from models.networks import build_vae

CPU_MODELS_PER_UNIT = 10
CPU_BUDGET_BYTES = 256 * 2**20
# decoder activations of one importance-sampling chunk on CPU (all models). Chunks are decoded and scored
# model by model (models/importance.py), so each model's share stays near its L2 + L3 slice; 64 MiB (about
# 6 MiB per model of a 10-model unit) measured best, 32 MiB 4-7 points of peak lower (docs/benchmarks.md)
CPU_IS_CACHE_BYTES = 64 * 2**20
CUDA_USABLE_SHARE = 0.9  # of the free memory; the rest is headroom for cuBLAS/cuDNN workspaces
_ADAM_COPIES = 4  # parameter, gradient, two moments


# what an allocation failure raises (torch.OutOfMemoryError since 2.5; torch.cuda's alias before)
OUT_OF_MEMORY: tuple[type[Exception], ...] = tuple(
    {cls for cls in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
     if isinstance(cls, type)}
) or (MemoryError,)  # fmt: skip


def device_name(device: torch.device) -> str:
    """The hardware behind a torch device, for the record: GPU model or CPU model name."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, before retrying smaller."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error naming the field."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device: must be auto, cpu, cuda or cuda:N; got {name!r}")
    return torch.device(name)


def default_budget_bytes(device: torch.device) -> int:
    """Memory one importance-sampling chunk may use when the config does not say."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return cuda_is_budget(free)
    return CPU_BUDGET_BYTES


def cuda_is_budget(free_bytes: int) -> int:
    """The importance-sampling chunk's own share of a CUDA device: a quarter of the free memory."""
    return max(CPU_BUDGET_BYTES, free_bytes // 4)


def is_cache_bytes(device: torch.device) -> int | None:
    """Cache cap of an importance-sampling chunk; None on CUDA (as large as the budget allows)."""
    return CPU_IS_CACHE_BYTES if device.type == "cpu" else None


def training_bytes_per_model(
    model_cfg: ModelConfig, image_shape: tuple[int, int, int], batch_size: int
) -> int:
    """Rough upper estimate of one model's training footprint inside a stack: parameters with their
    gradient and Adam moments, plus the forward/backward activations of one minibatch."""
    model = build_vae(model_cfg, image_shape, 0)
    params = sum(p.numel() for p in model.parameters())
    pixels = math.prod(image_shape)
    activations = batch_size * (4 * model.decoder_floats + 16 * pixels)
    return 4 * (_ADAM_COPIES * params + activations)


@dataclass(frozen=True)
class CudaMemoryPlan:
    """How a unit's share of a CUDA device is spent (bytes); `models` is how many fit."""

    free: int
    data: int  # pixels, fixed representation and held-out latents, as floats (the worst case)
    is_chunk: int  # the importance-sampling chunk's own budget, plus its latent noise
    per_model: int  # training footprint of one model at the job's batch size and image size
    models: int


def cuda_memory_plan(
    model_cfg: ModelConfig,
    audit_cfg: AuditConfig,
    n_samples: int,
    image_shape: tuple[int, int, int],
    batch_size: int,
    free_bytes: int,
) -> CudaMemoryPlan:
    """The unit size for a CUDA device with `free_bytes` free (a pure function: testable on CPU)."""
    pixels = math.prod(image_shape)
    data = 4 * n_samples * (2 * pixels + model_cfg.latent)
    budget = audit_cfg.is_chunk_bytes or cuda_is_budget(free_bytes)
    is_chunk = budget + budget // 4  # a chunk's latent noise is at most a quarter of its activations
    per_model = training_bytes_per_model(model_cfg, image_shape, batch_size)
    usable = int(CUDA_USABLE_SHARE * free_bytes) - data - is_chunk
    models = max(1, min(audit_cfg.n_models, usable // per_model))
    return CudaMemoryPlan(free_bytes, data, is_chunk, per_model, models)


def auto_models_per_unit(
    model_cfg: ModelConfig,
    audit_cfg: AuditConfig,
    n_samples: int,
    image_shape: tuple[int, int, int],
    device: torch.device,
    batch_size: int = TrainConfig.batch_size,
) -> int:
    if device.type != "cuda":
        if model_cfg.arch == "conv":
            # PyTorch's CPU grouped (transposed) convolutions are slower than E plain ones at 1 and 2
            # threads (docs/benchmarks.md); a unit of one model is exactly the sequential strategy
            return 1
        return min(audit_cfg.n_models, CPU_MODELS_PER_UNIT)
    free, _total = torch.cuda.mem_get_info(device)
    return cuda_memory_plan(model_cfg, audit_cfg, n_samples, image_shape, batch_size, free).models


def plan_units(
    model_cfg: ModelConfig,
    audit_cfg: AuditConfig,
    n_samples: int,
    image_shape: tuple[int, int, int],
    device: torch.device,
    batch_size: int = TrainConfig.batch_size,
) -> list[list[int]]:
    """Model ids 0..K*L-1 cut into contiguous units of nearly equal size (`batch_size`: the job's)."""
    size = audit_cfg.models_per_unit or auto_models_per_unit(
        model_cfg, audit_cfg, n_samples, image_shape, device, batch_size
    )
    total = audit_cfg.n_models
    count = math.ceil(total / min(size, total))
    bounds = [round(i * total / count) for i in range(count + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(count)]


def repetition_aligned(units: list[list[int]], folds: int) -> list[list[int]]:
    """The models of ``units`` re-cut so that every unit holds models of one repetition only (ids
    rep*K .. rep*K+K-1): one unit per repetition when the planned size allows K models, else each
    repetition cut into near-equal contiguous pieces no larger than the planned size. The adaptive stop
    (SPEC §7) can then skip whole repetitions and look at the ranking after each one. Re-cutting changes
    no model (units are independent, batched == sequential); the order (by model id) is kept."""
    models = sorted(m for unit in units for m in unit)
    size = max((len(unit) for unit in units), default=1)
    aligned: list[list[int]] = []
    for rep in sorted({m // folds for m in models}):
        ids = [m for m in models if m // folds == rep]
        pieces = math.ceil(len(ids) / size)
        bounds = [round(i * len(ids) / pieces) for i in range(pieces + 1)]
        aligned += [ids[bounds[i]:bounds[i + 1]] for i in range(pieces)]
    return aligned


def complete_repetitions(done_models: set[int], folds: int, repeats: int) -> int:
    """How many leading repetitions 0..l-1 have every one of their K models in ``done_models``."""
    for rep in range(repeats):
        if any(rep * folds + k not in done_models for k in range(folds)):
            return rep
    return repeats
