"""The float32 matmul/convolution precision policy of a unit, set in this one place.

Policy: **training may use TF32** on CUDA tensor cores (NVIDIA Ampere or newer), **every
log-likelihood is computed in full FP32** (importance sampling, held-out and external -ELBO curves,
generated samples). On CPU everything is FP32 (there is no TF32 there; PyTorch's optional bf16
path is never enabled).

Why (measured on CPU by emulating TF32, bench/precision_effect.py, docs/science.md): TF32 in training
perturbs the training trajectories like any change of float rounding (median |dM| 0.14 nats on
digits, Spearman 0.90 with FP32; a change of seed gives 0.51 and 0.01); TF32 in the likelihood would
move M by at most 0.002 nats. Training is nearly all of an audit's matmul work, so it takes the speed;
the scoring pass stays FP32 so a trained model's numbers are as exact as FP32 allows on every device.

``precision_scope(device, phase)`` applies the policy for one phase and restores the previous
settings; ``policy_for(device)`` is what a unit records in its result (and the job summary lists).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Phase = Literal["training", "likelihood"]
TRAINING_ALLOWS_TF32 = True  # the one switch: False makes CUDA units FP32 everywhere


def policy_for(device: torch.device) -> dict[str, str]:
    """What a unit on `device` runs in, per phase: "tf32" or "fp32" (TF32 needs compute capability 8+)."""
    tf32 = device.type == "cuda" and TRAINING_ALLOWS_TF32 and torch.cuda.get_device_capability(device)[0] >= 8
    return {"training": "tf32" if tf32 else "fp32", "likelihood": "fp32"}


# (module, attribute) pairs that hold the TF32 switches: PyTorch >= 2.9 has one string per backend
# ("tf32" / "ieee"); older versions have booleans. Only one of the two APIs is ever touched.
def _switches() -> list[tuple[object, str]]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        return [(matmul, "fp32_precision"), (conv, "fp32_precision")]
    return [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]


def _value(attribute: str, tf32: bool) -> object:
    if attribute == "fp32_precision":
        return "tf32" if tf32 else "ieee"
    return tf32


@contextmanager
def precision_scope(device: torch.device, phase: Phase) -> Iterator[None]:
    """Run the enclosed code under the policy for `phase` on `device` (a no-op on CPU)."""
    if device.type != "cuda":
        yield
        return
    switches = _switches()
    saved = [getattr(owner, attribute) for owner, attribute in switches]
    tf32 = policy_for(device)[phase] == "tf32"
    for owner, attribute in switches:
        setattr(owner, attribute, _value(attribute, tf32))
    try:
        yield
    finally:
        for (owner, attribute), value in zip(switches, saved, strict=True):
            setattr(owner, attribute, value)
