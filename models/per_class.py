"""The per-class view of memorization scores: per label, how many samples, the median and 0.95 quantile
of M, and how many lie above the audit's 0.95-quantile threshold (the "highly memorized" ones)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HIGH_QUANTILE = 0.95


def high_threshold(scores: np.ndarray) -> float | None:
    """The 0.95 quantile of the finite scores (the audit's "highly memorized" threshold)."""
    finite = scores[np.isfinite(scores)]
    return float(np.quantile(finite, HIGH_QUANTILE)) if finite.size else None


def per_class(scores: np.ndarray, labels: Sequence[str | None], threshold: float | None = None
              ) -> list[dict[str, Any]]:  # fmt: skip
    """One row per label (in label order; samples without a label are left out):
    ``{"label", "count", "n_scored", "median", "q95", "n_above_threshold"}``; NaN scores count in
    ``count`` only, and median / q95 are None for a class without a finite score."""
    scores = np.asarray(scores, dtype=np.float64)  # (N,)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    threshold = high_threshold(scores) if threshold is None else threshold
    names = np.array(["" if label is None else label for label in labels], dtype=object)
    has_label = np.array([label is not None for label in labels], dtype=bool)
    rows = []
    for name in sorted({label for label in labels if label is not None}, key=_natural):
        mine = scores[has_label & (names == name)]
        finite = mine[np.isfinite(mine)]
        rows.append({
            "label": name, "count": int(mine.size), "n_scored": int(finite.size),
            "median": float(np.median(finite)) if finite.size else None,
            "q95": float(np.quantile(finite, HIGH_QUANTILE)) if finite.size else None,
            "n_above_threshold": int((finite > threshold).sum()) if threshold is not None else 0,
        })  # fmt: skip
    return rows


def _natural(label: str) -> tuple[int, int | str]:
    """Integer labels in numeric order ("2" before "10"), names alphabetically after them."""
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)
