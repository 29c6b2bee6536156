"""The planted-atypical-images fixture shared by the planted test and its calibration script."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedDigits:
    images: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    planted: np.ndarray  # indices of the atypical images present once
    sources: np.ndarray  # indices of the ordinary digits the planted ones were made from
    duplicated: np.ndarray  # indices of atypical images present with near-duplicate copies


def planted_digits(
    n_base: int = 1797, n_planted: int = 8, n_duplicated: int = 2, copies: int = 4, seed: int = 0
) -> PlantedDigits:
    """sklearn digits plus inverted digits: `n_planted` present once, `n_duplicated` present
    `copies` times each (tiny noise) - an atypical image with near-duplicates is not memorized."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    base = (load_digits().images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    base = base[rng.permutation(len(base))[:n_base]]
    chosen = rng.choice(len(base), size=n_planted + n_duplicated, replace=False)
    inverted = 1.0 - base[chosen]
    once = inverted[:n_planted]
    dups = np.repeat(inverted[n_planted:], copies, axis=0)
    dups = np.clip(dups + rng.normal(0.0, 0.03, dups.shape), 0.0, 1.0).astype(np.float32)
    images = np.concatenate([base, once, dups])
    n = len(base)
    return PlantedDigits(
        images=images,
        planted=np.arange(n, n + n_planted),
        sources=chosen[:n_planted],
        duplicated=np.arange(n + n_planted, len(images)),
    )
