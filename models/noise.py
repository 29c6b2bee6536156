"""Seeded randomness of an audit, derived so that every draw is a pure function of its purpose.

Seeds come from ``numpy.random.SeedSequence((audit seed, purpose tag, *indices))``, so the fold
layout, a model's initialisation, its minibatch order and the evaluation noise never depend on
which other models happen to share a unit, on the strategy or on chunk sizes. Noise indexed by
sample is drawn in fixed blocks of ``NOISE_BLOCK`` samples, so any slice of samples gets the same
numbers however the caller chunks them.

Common random numbers across devices (SPEC §1): the noise a sample is *scored* with (the fixed
evaluation representation, the importance-sampling latents, the held-out loss latents) comes from
``blocked_noise``, which always draws on a CPU generator and then moves the block to the unit's
device, so a sample gets the same numbers whether its models run on a CPU or a CUDA unit. Training
noise (minibatch binarization, reparameterisation) uses generators on the unit's device: it only has
to be reproducible on a given device type (CPU and CUDA generators produce different streams).
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch

NOISE_BLOCK = 64


class Purpose(enum.IntEnum):
    FOLDS = 1
    INIT = 2
    ORDER = 3
    TRAIN_NOISE = 4
    TRAIN_EPS = 5
    EVAL_REPR = 6
    EVAL_EPS = 7
    HELDOUT_EPS = 8
    GENERATE = 9
    BOOTSTRAP = 10  # resampling of repetitions (models.uncertainty)


def derive_seed(seed: int, purpose: Purpose, *indices: int) -> int:
    """A 63-bit seed for one purpose (and e.g. model id, epoch, block)."""
    state = np.random.SeedSequence([seed, int(purpose), *indices]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generator(
    seed: int, purpose: Purpose, *indices: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose, *indices))
    return gen


def noise_block(kind: str, key: tuple[int, ...], block: int, tail: tuple[int, ...]) -> torch.Tensor:
    """The CPU noise (NOISE_BLOCK, *tail) of one block of samples: uniform ("rand") or normal ("randn"),
    in the default float dtype. key = (seed, purpose, *indices). It takes no device on purpose."""
    draw = torch.rand if kind == "rand" else torch.randn
    seed, purpose, *indices = key
    return draw((NOISE_BLOCK, *tail), generator=generator(seed, Purpose(purpose), *indices, block))


def blocked_noise(
    kind: str, key: tuple[int, ...], start: int, stop: int, tail: tuple[int, ...], device: torch.device | str
) -> torch.Tensor:
    """Noise of shape (stop - start, *tail) for samples start..stop-1 on `device`, identical for a
    sample whatever the requested range and whatever the device (drawn on the CPU, then moved)."""
    parts = []
    for block in range(start // NOISE_BLOCK, math.ceil(stop / NOISE_BLOCK)):
        noise = noise_block(kind, key, block, tail)
        lo = max(start - block * NOISE_BLOCK, 0)
        hi = min(stop - block * NOISE_BLOCK, NOISE_BLOCK)
        parts.append(noise[lo:hi])
    noise = parts[0] if len(parts) == 1 else torch.cat(parts)
    return to_device(noise, torch.device(device))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to CUDA through pinned memory without blocking the host."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
