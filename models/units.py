"""Devices, memory budgets and the split of an audit's K*L models into units.

A unit is the group of fold models ``train_unit`` trains as one batched ensemble. Its size is
``AuditConfig.models_per_unit`` when set; otherwise the largest size that fits the device: on CUDA
a share of the free memory divided by an estimate of one model's training footprint (parameters
plus Adam state plus activations of one minibatch); on CPU at most ``CPU_MODELS_PER_UNIT`` models,
except the conv VAE, which gets units of one model there (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch

from models.config import AuditConfig, ModelConfig
from models.networks import build_vae

CPU_MODELS_PER_UNIT = 10
CPU_BUDGET_BYTES = 256 * 2**20
# decoded latents per model in one importance-sampling chunk on CPU: small enough for the chunk's
# activations to stay in cache while the likelihood reads them back (measured, docs/benchmarks.md)
CPU_IS_ROWS_PER_MODEL = 1024
CUDA_MEMORY_SHARE = 0.5  # of the free memory, for the training stacks of one unit
_ADAM_COPIES = 4  # parameter, gradient, two moments


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
        return max(CPU_BUDGET_BYTES, free // 4)
    return CPU_BUDGET_BYTES


def is_rows_per_model(device: torch.device) -> int | None:
    """Cache cap of an importance-sampling chunk; None on CUDA (as large as the budget allows)."""
    return CPU_IS_ROWS_PER_MODEL if device.type == "cpu" else None


def training_bytes_per_model(
    model_cfg: ModelConfig, image_shape: tuple[int, int, int], batch_size: int
) -> int:
    """Rough upper estimate of one model's training footprint inside a stack."""
    model = build_vae(model_cfg, image_shape, 0)
    params = sum(p.numel() for p in model.parameters())
    pixels = math.prod(image_shape)
    activations = batch_size * (4 * model.decoder_floats + 16 * pixels)
    return 4 * (_ADAM_COPIES * params + activations)


def auto_models_per_unit(
    model_cfg: ModelConfig,
    audit_cfg: AuditConfig,
    n_samples: int,
    image_shape: tuple[int, int, int],
    device: torch.device,
    batch_size: int = 64,
) -> int:
    if device.type != "cuda":
        if model_cfg.arch == "conv":
            # PyTorch's CPU grouped (transposed) convolutions are slower than E plain ones at 1 and 2
            # threads (docs/benchmarks.md); a unit of one model is exactly the sequential strategy
            return 1
        return min(audit_cfg.n_models, CPU_MODELS_PER_UNIT)
    free, _total = torch.cuda.mem_get_info(device)
    data_bytes = 4 * 3 * n_samples * math.prod(image_shape)  # images, fixed representation, epoch noise
    usable = CUDA_MEMORY_SHARE * free - data_bytes
    per_model = training_bytes_per_model(model_cfg, image_shape, batch_size)
    return max(1, min(audit_cfg.n_models, int(usable // per_model)))


def plan_units(
    model_cfg: ModelConfig,
    audit_cfg: AuditConfig,
    n_samples: int,
    image_shape: tuple[int, int, int],
    device: torch.device,
) -> list[list[int]]:
    """Model ids 0..K*L-1 cut into contiguous units of nearly equal size."""
    size = audit_cfg.models_per_unit or auto_models_per_unit(
        model_cfg, audit_cfg, n_samples, image_shape, device
    )
    total = audit_cfg.n_models
    count = math.ceil(total / min(size, total))
    bounds = [round(i * total / count) for i in range(count + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(count)]
