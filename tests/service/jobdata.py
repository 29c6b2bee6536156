"""Small datasets and job bodies for the service tests (tiny on purpose: CI runs on 2 CPU cores)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def digits_subset(count: int, offset: int = 0) -> np.ndarray:
    """(count, 8, 8) uint8 0..255 digits, the first ``count`` after ``offset``."""
    from sklearn.datasets import load_digits

    images = load_digits().images[offset:offset + count]  # (count, 8, 8) floats 0..16
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8)


def npz_bytes(images: np.ndarray, **extra: np.ndarray) -> bytes:
    """An .npz of ``images`` (and e.g. ``keys=`` / ``labels=`` arrays)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, **extra)  # type: ignore[arg-type]
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tiny_job(dataset: dict[str, str], epochs: int = 2, batch_size: int = 32, **audit: Any) -> dict[str, Any]:
    """A small VAE audit; ``batch_size`` must not exceed the dataset's size (MEMAUDIT limits)."""
    return {
        "dataset": dataset,
        "model": {"arch": "mlp", "hidden": [32], "latent": 4, "likelihood": "bernoulli"},
        "training": {"epochs": epochs, "lr": 1e-3, "batch_size": batch_size},
        "audit": {"folds": 3, "repeats": 2, "is_samples": 8, "seed": 7, "models_per_unit": 2, **audit},
    }
