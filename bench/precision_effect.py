"""What TF32 would do to the scores, measured on CPU by emulating it (there is no GPU here).

TF32 (NVIDIA tensor cores) multiplies FP32 matrices after rounding both inputs to 10 explicit mantissa
bits, accumulating in FP32. This script emulates exactly that in the stacked MLP's matmuls (forward and
both backward products round their inputs) and runs the same digits audit (batched strategy):

* ``fp32``: the reference; ``fp32-seed1``: the same with another seed (how much M moves for reasons that
  have nothing to do with precision: the scale to compare with);
* ``tf32-training``: TF32 emulated in training only, FP32 likelihoods (the policy of models/precision.py);
* ``tf32-likelihood``: FP32 training, TF32 emulated in importance sampling (what the policy avoids).

Reports per variant: max and median |M - M_fp32| (nats), the Spearman rank correlation with fp32 and the
overlap of the top 5% by M.

    .venv/bin/python -m bench.precision_effect --epochs 20 --folds 5 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from scipy import stats

import models.training
from models.audit import run_audit
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.ensemble import StackedLinear

_EMULATE = {"on": False}


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (10 explicit mantissa bits, round to nearest, ties away from zero)."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF  # add half of the 13 dropped bits, then clear them
    return rounded.view(torch.float32)


class _TF32Baddbmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xr, wr = to_tf32(x), to_tf32(weight)
        ctx.save_for_backward(xr, wr)
        return torch.baddbmm(bias, xr, wr)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr, wr = ctx.saved_tensors
        g = to_tf32(grad)
        return grad.sum(1, keepdim=True), torch.bmm(g, wr.transpose(1, 2)), torch.bmm(xr.transpose(1, 2), g)


def _forward(self: StackedLinear, x: torch.Tensor) -> torch.Tensor:
    if _EMULATE["on"]:
        return _TF32Baddbmm.apply(self.bias, x, self.weight)  # type: ignore[no-any-return]
    return torch.baddbmm(self.bias, x, self.weight)


def _scope_for(tf32_phase: str | None) -> Any:
    @contextlib.contextmanager
    def scope(device: torch.device, phase: str) -> Iterator[None]:
        saved, _EMULATE["on"] = _EMULATE["on"], phase == tf32_phase
        try:
            yield
        finally:
            _EMULATE["on"] = saved

    return scope


def audit(args: argparse.Namespace, seed: int, tf32_phase: str | None) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16.0).astype(np.float32)[:, None]
    models.training.precision_scope = _scope_for(tf32_phase)  # type: ignore[assignment]
    cfg = AuditConfig(folds=args.folds, repeats=args.repeats, is_samples=args.is_samples, seed=seed,
                      device="cpu", models_per_unit=args.folds * args.repeats)  # fmt: skip
    result = run_audit(images, ModelConfig(), TrainConfig(epochs=args.epochs), cfg)
    return np.asarray(result.scores.M)


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    diff = np.abs(other - reference)
    k = max(1, int(0.05 * len(reference)))
    top_ref, top_other = set(np.argsort(-reference)[:k]), set(np.argsort(-other)[:k])
    return {
        "max_abs_dM": float(diff.max()),
        "median_abs_dM": float(np.median(diff)),
        "spearman": float(stats.spearmanr(reference, other).statistic),
        "top5_overlap": len(top_ref & top_other) / k,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--is-samples", type=int, default=64)
    args = parser.parse_args()
    StackedLinear.forward = _forward  # type: ignore[method-assign]
    reference = audit(args, 0, None)
    rows = {
        "fp32-seed1": compare(reference, audit(args, 1, None)),
        "tf32-training": compare(reference, audit(args, 0, "training")),
        "tf32-likelihood": compare(reference, audit(args, 0, "likelihood")),
    }
    print(json.dumps(rows, indent=2))
    print("\n| variant | max abs dM (nats) | median abs dM | Spearman vs fp32 | top-5% overlap |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['max_abs_dM']:.3f} | {r['median_abs_dM']:.4f} | {r['spearman']:.4f} "
              f"| {r['top5_overlap']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
