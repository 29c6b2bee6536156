"""The planted-atypical-images fixture shared by the planted test and its calibration runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedDigits:
    images: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    planted: np.ndarray  # indices of the atypical images present once
    sources: np.ndarray  # indices of the ordinary digits the planted ones were made from
    duplicated: np.ndarray  # indices of the copies of one atypical image (duplicates)


def planted_digits(n_base: int = 1000, n_planted: int = 6, copies: int = 10, seed: int = 0) -> PlantedDigits:
    """`n_base` sklearn digits, `n_planted` inverted digits each present once, and one black-and-white
    noise image present `copies` times: an atypical image with duplicates in the training set is
    not memorized (its binarization is deterministic, so the copies are exact duplicates)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    every = (load_digits().images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    order = rng.permutation(len(every))
    base = every[order[:n_base]]
    chosen = rng.choice(n_base, size=n_planted, replace=False)
    once = 1.0 - base[chosen]
    template = (rng.random((1, *base.shape[1:])) < 0.5).astype(np.float32)  # black-and-white noise
    dups = np.repeat(template, copies, axis=0)
    images = np.concatenate([base, once, dups])
    return PlantedDigits(
        images=images,
        planted=np.arange(n_base, n_base + n_planted),
        sources=chosen,
        duplicated=np.arange(n_base + n_planted, len(images)),
    )
