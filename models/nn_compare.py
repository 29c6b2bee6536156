"""The nearest-neighbour comparison that is reported next to the memorization score (SPEC §3).

For each training sample i: d_H(i) = distance to its nearest held-out image, d_S(i) = distance to its nearest
model sample (|S| = |H|), rho_i = d_H(i) / d_S(i). Every training sample gets its own exact minimum: the
reference analysis script took the distance of the first image of each batch for the whole batch, which
is not reproduced here. Distances are Euclidean in pixel space, optionally after average-pooling the images
by an integer factor. The search is exact and chunked (models.neighbours), so 60k x 60k fits in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from models.neighbours import DEFAULT_BLOCK_BYTES, nearest

# Training images are moved to the device this many at a time, so device memory holds only the references
# (H and S) plus one slice of queries, whatever the training-set size.
QUERY_ROWS_PER_TRANSFER = 16384


@dataclass(frozen=True)
class NearestNeighbourComparison:
    d_heldout: np.ndarray  # (N,) float64, distance to the nearest held-out image
    d_model: np.ndarray  # (N,) float64, distance to the nearest model sample
    rho: np.ndarray  # (N,) float64, d_H / d_S; inf when d_S = 0 < d_H, NaN when both are 0
    heldout_index: np.ndarray  # (N,) int64, which held-out image is nearest
    model_index: np.ndarray  # (N,) int64, which model sample is nearest
    reference_size: int  # |H| = |S|
    downscale: int  # average-pooling factor applied before measuring distances


@dataclass(frozen=True)
class RankCorrelation:
    statistic: float | None  # Spearman's rank correlation; None when undefined (too few or constant values)
    pvalue: float | None
    count: int  # samples used: those where neither value is NaN


def downscale_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool (N, C, H, W) images by ``factor`` in both directions; H and W must be divisible by it."""
    if factor < 1:
        raise ValueError(f"downscale: the factor must be a positive integer, got {factor}")
    if factor == 1:
        return images
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"downscale: {height}x{width} images are not divisible by the factor {factor}")
    return torch.nn.functional.avg_pool2d(images, kernel_size=factor)  # (N, C, H/f, W/f)


def compare_nearest(
    train: np.ndarray | torch.Tensor,
    heldout: np.ndarray | torch.Tensor,
    model_samples: np.ndarray | torch.Tensor,
    *,
    downscale: int = 1,
    device: torch.device | str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> NearestNeighbourComparison:
    """d_H, d_S and rho for every training image; all inputs (N, C, H, W) with the same (C, H, W)."""
    _check_inputs(train, heldout, model_samples)
    device = torch.device(device)
    heldout_refs = _prepare(heldout, downscale, device)  # (|H|, C, H', W')
    model_refs = _prepare(model_samples, downscale, device)  # (|S|, C, H', W')
    count = int(train.shape[0])
    d_heldout, d_model = np.empty(count), np.empty(count)
    heldout_index, model_index = np.empty(count, np.int64), np.empty(count, np.int64)
    for start in range(0, count, QUERY_ROWS_PER_TRANSFER):
        rows = slice(start, min(count, start + QUERY_ROWS_PER_TRANSFER))
        queries = _prepare(train[rows], downscale, device)  # (q, C, H', W')
        to_heldout = nearest(queries, heldout_refs, block_bytes=block_bytes)
        to_model = nearest(queries, model_refs, block_bytes=block_bytes)
        d_heldout[rows] = to_heldout.distance.double().cpu().numpy()
        d_model[rows] = to_model.distance.double().cpu().numpy()
        heldout_index[rows] = to_heldout.index.cpu().numpy()
        model_index[rows] = to_model.index.cpu().numpy()
    return NearestNeighbourComparison(
        d_heldout=d_heldout,
        d_model=d_model,
        rho=distance_ratio(d_heldout, d_model),
        heldout_index=heldout_index,
        model_index=model_index,
        reference_size=int(heldout.shape[0]),
        downscale=downscale,
    )


def distance_ratio(d_heldout: np.ndarray, d_model: np.ndarray) -> np.ndarray:
    """rho = d_H / d_S with IEEE semantics: an exact copy (d_S = 0) has rho = inf, 0/0 is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(d_heldout, dtype=np.float64) / np.asarray(d_model, dtype=np.float64)


def rank_correlation(rho: np.ndarray, scores: np.ndarray) -> RankCorrelation:
    """Spearman correlation of rho with the memorization score M over samples where both are defined.

    rho = inf (exact copies) ranks above every finite value; NaN (0/0, or provisional M) is left out.
    """
    rho, scores = np.asarray(rho, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if rho.shape != scores.shape:
        raise ValueError(f"rho and scores differ in shape: {rho.shape} vs {scores.shape}")
    usable = ~(np.isnan(rho) | np.isnan(scores))
    count = int(usable.sum())
    if count < 3 or np.ptp(rho[usable]) == 0 or np.ptp(scores[usable]) == 0:
        return RankCorrelation(statistic=None, pvalue=None, count=count)
    result = stats.spearmanr(rho[usable], scores[usable])
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    if math.isnan(statistic):
        return RankCorrelation(statistic=None, pvalue=None, count=count)
    return RankCorrelation(statistic=statistic, pvalue=pvalue, count=count)


def _check_inputs(
    train: np.ndarray | torch.Tensor,
    heldout: np.ndarray | torch.Tensor,
    model_samples: np.ndarray | torch.Tensor,
) -> None:
    if len(heldout) == 0:
        raise ValueError("heldout: the held-out set is empty")
    if len(model_samples) != len(heldout):
        raise ValueError(
            f"samples: the comparison needs as many model samples as held-out images (|S| = |H|), "
            f"got {len(model_samples)} and {len(heldout)}"
        )
    shapes = {tuple(train.shape[1:]), tuple(heldout.shape[1:]), tuple(model_samples.shape[1:])}
    if len(shapes) != 1:
        raise ValueError(f"heldout: training, held-out and model images differ in shape: {sorted(shapes)}")


def _prepare(images: np.ndarray | torch.Tensor, downscale: int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(images).to(device=device, dtype=torch.float32)  # (n, C, H, W)
    return downscale_images(tensor, downscale)
