"""Seeded randomness of an audit, derived so that every draw is a pure function of its purpose.

Seeds come from ``numpy.random.SeedSequence((audit seed, purpose tag, *indices))``, so the fold
layout, a model's initialisation, its minibatch order and the evaluation noise never depend on
which other models happen to share a unit, on the strategy or on chunk sizes. Noise indexed by
sample is drawn in fixed blocks of ``NOISE_BLOCK`` samples, so any slice of samples gets the same
numbers however the caller chunks them. Draws are reproducible on a given device type (CPU and
CUDA generators produce different streams).
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


def blocked_noise(
    kind: str, key: tuple[int, ...], start: int, stop: int, tail: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Uniform ("rand") or normal ("randn") noise of shape (stop - start, *tail) for samples
    start..stop-1, identical for a sample whatever the requested range. key = (seed, purpose, ...)."""
    draw = torch.rand if kind == "rand" else torch.randn
    seed, purpose, *indices = key
    parts = []
    for block in range(start // NOISE_BLOCK, math.ceil(stop / NOISE_BLOCK)):
        gen = generator(seed, Purpose(purpose), *indices, block, device=device)
        noise = draw((NOISE_BLOCK, *tail), generator=gen, device=device)
        lo = max(start - block * NOISE_BLOCK, 0)
        hi = min(stop - block * NOISE_BLOCK, NOISE_BLOCK)
        parts.append(noise[lo:hi])
    return torch.cat(parts)
