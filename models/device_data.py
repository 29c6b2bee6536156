"""A unit's data on its device, stored as compactly as the values allow.

A 60k x 28 x 28 set is 47 MB as 8-bit levels and 188 MB as float32, so the unit keeps:

* the pixels: uint8 levels 0..255 when the input is uint8 (exactly the intensities k/255 the
  science reads, converted per minibatch), else the float intensities in the default dtype;
* the fixed evaluation representation (SPEC §1 common random numbers) as 0/1 bytes for the Bernoulli
  likelihood, as the 8-bit levels for the discretized logistic (shared with the pixels when they are
  uint8), and as floats only for the dequantized Gaussian likelihoods, whose values are continuous.

So a uint8 dataset costs at most one float copy plus the uint8 original on the device, and never
more than one uint8 array per extra representation. Conversions happen on the gathered rows only.
The evaluation noise is drawn in slabs (``models.noise.blocked_noise``), never for the whole set at
once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from models.likelihoods import NEEDS_NOISE, quantize_8bit, represent
from models.noise import NOISE_BLOCK, Purpose, blocked_noise, to_device

_SLAB = 64 * NOISE_BLOCK  # samples per step when the representation is built
_LEVELS = 255.0
Index = torch.Tensor | slice


@dataclass
class PixelStore:
    """(N, C, H, W) images: uint8 levels (read as k / 255) or float intensities in [0, 1]."""

    values: torch.Tensor

    @classmethod
    def from_array(cls, images: np.ndarray, device: torch.device) -> PixelStore:
        if images.dtype == np.uint8:
            with warnings.catch_warnings():  # read-only arrays (np.frombuffer) are only ever read here
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return cls(to_device(torch.from_numpy(images), device))
        return cls(torch.as_tensor(images, dtype=torch.get_default_dtype(), device=device))

    @property
    def is_uint8(self) -> bool:
        return self.values.dtype == torch.uint8

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def count(self) -> int:
        return int(self.values.shape[0])

    def intensities(self, index: Index) -> torch.Tensor:
        """Rows `index` (a slice or an index tensor of any shape) as float intensities in [0, 1]."""
        rows = self.values[index]
        if self.is_uint8:
            return torch.div(rows, _LEVELS)  # one pass: the cast to the default dtype happens inside
        return rows


@dataclass
class StoredRepresentation:
    """What every model reads and scores for each sample: codes / divisor, or float codes as they are."""

    codes: torch.Tensor  # (N, C, H, W) uint8 or float
    divisor: float | None  # None: the codes are the representation itself

    def rows(self, index: Index) -> torch.Tensor:
        rows = self.codes[index]
        if self.divisor is None:
            return rows
        rows = rows.to(torch.get_default_dtype())
        return rows if self.divisor == 1.0 else rows / self.divisor

    @property
    def count(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size()


def fixed_representation(store: PixelStore, likelihood: str, seed: int, index: int) -> StoredRepresentation:
    """The one seeded binarization/dequantization of every sample shared by all models (SPEC §1).

    The noise of sample i is block i // NOISE_BLOCK of (seed, EVAL_REPR, index), drawn on the CPU, so
    the representation does not depend on the device nor on how it is built."""
    if likelihood == "logistic":  # the 8-bit levels themselves, no noise
        if store.is_uint8:
            return StoredRepresentation(store.values, _LEVELS)
        return StoredRepresentation(quantize_8bit(store.values).to(torch.uint8), _LEVELS)
    if not NEEDS_NOISE[likelihood]:
        raise ValueError(f"likelihood: unknown {likelihood!r}")
    binary = likelihood == "bernoulli"
    dtype = torch.uint8 if binary else torch.get_default_dtype()
    codes = torch.empty(store.shape, dtype=dtype, device=store.values.device)
    tail = store.shape[1:]
    for start in range(0, store.count, _SLAB):
        stop = min(start + _SLAB, store.count)
        noise = blocked_noise("rand", (seed, Purpose.EVAL_REPR, index), start, stop, tail, codes.device)
        codes[start:stop] = represent(store.intensities(slice(start, stop)), noise, likelihood).to(dtype)
    return StoredRepresentation(codes, 1.0 if binary else None)
