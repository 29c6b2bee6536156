"""``UnitResult``: what one unit of fold models produces, and its pickle-free ``.npz`` form.

Artifacts stay ``format_version`` 1: fields added later (``device_name``, ``precision``,
``stacks``) are optional metadata keys, so artifacts written before them still load (with
``device_name`` "", ``precision`` None = not recorded, ``stacks`` 0 = unknown).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_ARRAYS = (
    "model_ids",
    "loglik",
    "eval_epochs",
    "epoch_loglik",
    "train_loss",
    "heldout_loss",
    "external_loss",
    "samples",
)
_FORMAT_VERSION = 1


@dataclass
class UnitResult:
    model_ids: np.ndarray  # (u,) int64
    loglik: np.ndarray  # (u, N) float64: final IS log p(x_i | model)
    eval_epochs: np.ndarray  # (E,) int64, 1-based; empty without eval_every
    epoch_loglik: np.ndarray | None  # (E, u, N) float64, with eval_every
    train_loss: np.ndarray  # (u, epochs) mean training -ELBO per epoch (nats)
    heldout_loss: np.ndarray  # (u, epochs) -ELBO on the model's held-out fold, fixed noise
    external_loss: np.ndarray | None  # (u, epochs) -ELBO on the external held-out set, if given
    samples: np.ndarray | None  # (u, k, C, H, W) float32 decoder means of z ~ N(0, I)
    timings: dict[str, float]
    device: str  # the torch device the unit ran on, e.g. "cpu", "cuda:0"
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    audit_config: dict[str, Any]
    model_parameters: int | None = None  # learned parameters of one fold model (None: older artifact)
    device_name: str = ""  # e.g. "NVIDIA H100 80GB HBM3" or the CPU's model name
    precision: dict[str, str] | None = field(default=None)  # models.precision.policy_for
    stacks: int = 0  # stacks trained: 1 batched, more after out-of-memory splits or sequential


def save_unit(path: str | Path, result: UnitResult) -> None:
    """Write a unit as .npz; metadata is one JSON string, nothing is pickled."""
    arrays = {name: getattr(result, name) for name in _ARRAYS if getattr(result, name) is not None}
    meta = {
        "format_version": _FORMAT_VERSION,
        "timings": result.timings,
        "device": result.device,
        "model_config": result.model_config,
        "train_config": result.train_config,
        "audit_config": result.audit_config,
        "model_parameters": result.model_parameters,
        "device_name": result.device_name,
        "precision": result.precision,
        "stacks": result.stacks,
    }
    with open(path, "wb") as handle:  # a file handle keeps numpy from appending ".npz"
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load_unit(path: str | Path) -> UnitResult:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unit artifact: unsupported format_version {meta.get('format_version')!r}")
        arrays = {name: (data[name] if name in data.files else None) for name in _ARRAYS}
    return UnitResult(
        **arrays,  # type: ignore[arg-type]
        timings=meta["timings"],
        device=meta["device"],
        model_config=meta["model_config"],
        train_config=meta["train_config"],
        audit_config=meta["audit_config"],
        model_parameters=meta.get("model_parameters"),
        device_name=str(meta.get("device_name", "")),
        precision=meta.get("precision"),
        stacks=int(meta.get("stacks", 0)),
    )


def unit_environment(results: Sequence[UnitResult]) -> dict[str, Any]:
    """Where and how the units ran, for a job summary: every device and precision policy met, and
    per unit its models, device and policy (units from old artifacts show what they recorded)."""
    units = [
        {
            "model_ids": [int(m) for m in r.model_ids],
            "device": r.device,
            "device_name": r.device_name,
            "precision": r.precision,
            "stacks": r.stacks,
            "train_seconds": r.timings.get("train_seconds"),
            "is_seconds": r.timings.get("is_seconds"),
        }
        for r in results
    ]
    devices = sorted({f"{r.device} ({r.device_name})" if r.device_name else r.device for r in results})
    policies = [p for p in {json.dumps(r.precision, sort_keys=True) for r in results}]
    return {"devices": devices, "precision": [json.loads(p) for p in sorted(policies)], "units": units}
