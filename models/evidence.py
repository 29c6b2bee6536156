"""Nearest-neighbour evidence for the flagged training samples of a job (what the report and the API show).

For every flagged training sample: its k nearest *other* training images, its nearest held-out image and
its nearest generated image (when those sets exist), and for GAN / copy-test jobs the generated samples
that copy it. Computed once, in the job's finishing step, with the exact chunked search of
models/neighbours.py (bounded memory: queries are the flagged samples only, references stream in blocks).
Stored as one .npz without pickle (:func:`save_evidence` / :func:`load_evidence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch (through models.neighbours) is imported where the search runs, not with this module: the API
# reads stored evidence (load_evidence) and must not pay torch's import and memory for it.

FORMAT = 1


@dataclass(frozen=True)
class EvidenceConfig:
    """Which samples are flagged, and how much evidence each gets (docs/science.md, "Neighbour evidence")."""

    top: int = 100  # always the top-scored samples...
    quantile: float = 0.95  # ...plus every sample above this quantile of the finite scores...
    cap: int = 500  # ...but never more than this many (score order decides who stays)
    k_train: int = 3  # nearest other training images per flagged sample
    copies: int = 8  # generated samples kept per copied training sample (closest first)


@dataclass(frozen=True)
class Evidence:
    sample_ids: np.ndarray  # (F,) int64, flagged training samples in score order (highest first)
    train_index: np.ndarray  # (F, k) int64 nearest other training samples, -1 where fewer exist
    train_distance: np.ndarray  # (F, k) float64, inf where fewer exist
    space: str  # where the train / held-out / generated distances live, e.g. "pixels"
    metric: str  # "euclidean"
    heldout_index: np.ndarray | None = None  # (F,) nearest held-out image
    heldout_distance: np.ndarray | None = None  # (F,)
    generated_index: np.ndarray | None = None  # (F,) nearest generated image (VAE jobs' pooled samples)
    generated_distance: np.ndarray | None = None  # (F,)
    copies_index: np.ndarray | None = None  # (F, C) generated samples that copy the sample, -1 padded
    copies_distance: np.ndarray | None = None  # (F, C) their distance (the job's copy space), NaN padded
    copies_space: str = ""  # the GAN job's feature space and metric, e.g. "pixels, cosine"
    copy_threshold: float = float("nan")

    def row_of(self, sample_id: int) -> int | None:
        found = np.flatnonzero(self.sample_ids == sample_id)
        return int(found[0]) if found.size else None


def flagged_samples(score: np.ndarray, config: EvidenceConfig = EvidenceConfig()) -> np.ndarray:
    """Sample ids, highest score first (ties: lower id first): the top ``config.top`` finite scores,
    extended to every sample above the ``config.quantile`` quantile, at most ``config.cap``. NaN never."""
    score = np.asarray(score, dtype=np.float64)  # (N,)
    finite = np.flatnonzero(np.isfinite(score))
    if finite.size == 0:
        return np.empty(0, dtype=np.int64)
    order = finite[np.lexsort((finite, -score[finite]))]  # score desc, then id asc
    threshold = float(np.quantile(score[finite], config.quantile))
    above = int(np.count_nonzero(score[finite] > threshold))
    count = min(max(config.top, above), config.cap, finite.size)
    return order[:count].astype(np.int64)


def _as_features(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, ...) images or features -> (N, D) float32; uint8 levels become intensities in [0, 1]."""
    import torch

    if isinstance(images, np.ndarray) and not images.flags.writeable:  # e.g. a read-only cached view
        images = images.copy()
    tensor = torch.as_tensor(images)
    if tensor.dtype == torch.uint8:
        return tensor.flatten(1).float() / 255.0
    return tensor.flatten(1).float()


def copies_of(
    flagged: np.ndarray, generated_nearest: np.ndarray, generated_distance: np.ndarray, threshold: float,
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per flagged sample, the generated samples whose nearest training sample it is and whose distance is
    at most ``threshold`` (the job's copy rule), closest first (ties: lower index): (F, limit) each."""
    index = np.full((len(flagged), limit), -1, dtype=np.int64)
    distance = np.full((len(flagged), limit), np.nan, dtype=np.float64)
    copying = np.flatnonzero(np.asarray(generated_distance) <= threshold)
    by_sample: dict[int, list[int]] = {}
    for g in copying[np.lexsort((copying, generated_distance[copying]))]:
        by_sample.setdefault(int(generated_nearest[g]), []).append(int(g))
    for row, sample_id in enumerate(flagged.tolist()):
        chosen = by_sample.get(sample_id, [])[:limit]
        index[row, : len(chosen)] = chosen
        distance[row, : len(chosen)] = generated_distance[chosen]
    return index, distance


def _nearest_in(queries: torch.Tensor, references: torch.Tensor | np.ndarray | None,
                block_bytes: int) -> tuple[np.ndarray | None, np.ndarray | None]:  # fmt: skip
    from models.neighbours import nearest

    if references is None or len(references) == 0:
        return None, None
    found = nearest(queries, _as_features(references), metric="euclidean", block_bytes=block_bytes)
    return found.index.cpu().numpy().astype(np.int64), found.distance.double().cpu().numpy()


def compute_evidence(
    score: np.ndarray,
    train: torch.Tensor | np.ndarray,
    *,
    heldout: torch.Tensor | np.ndarray | None = None,
    generated: torch.Tensor | np.ndarray | None = None,
    config: EvidenceConfig = EvidenceConfig(),
    space: str = "pixels",
    block_bytes: int | None = None,
) -> Evidence:
    """Evidence for the flagged samples of ``score`` (N,): train (N, ...) images or features (uint8 levels
    or floats), held-out (n, ...) and generated (m, ...) in the same space; Euclidean distances.
    ``block_bytes`` defaults to models.neighbours.DEFAULT_BLOCK_BYTES."""
    import torch

    from models.neighbours import DEFAULT_BLOCK_BYTES, nearest_k

    block_bytes = DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes
    flagged = flagged_samples(score, config)
    references = _as_features(train)  # (N, D)
    queries = references[torch.from_numpy(flagged)]  # (F, D)
    own = torch.from_numpy(flagged)
    found = nearest_k(queries, references, config.k_train, exclude=own, block_bytes=block_bytes)
    heldout_index, heldout_distance = _nearest_in(queries, heldout, block_bytes)
    generated_index, generated_distance = _nearest_in(queries, generated, block_bytes)
    return Evidence(
        sample_ids=flagged, train_index=found.index.cpu().numpy().astype(np.int64),
        train_distance=found.distance.double().cpu().numpy(), space=space, metric="euclidean",
        heldout_index=heldout_index, heldout_distance=heldout_distance,
        generated_index=generated_index, generated_distance=generated_distance,
    )  # fmt: skip


def with_copies(evidence: Evidence, generated_nearest: np.ndarray, generated_distance: np.ndarray,
                threshold: float, space: str, limit: int = EvidenceConfig.copies) -> Evidence:  # fmt: skip
    """``evidence`` plus the generated samples that copy each flagged sample (GAN / copy-test jobs)."""
    index, distance = copies_of(evidence.sample_ids, generated_nearest, generated_distance, threshold, limit)
    return Evidence(**{**vars(evidence), "copies_index": index, "copies_distance": distance,
                       "copies_space": space, "copy_threshold": float(threshold)})  # fmt: skip


ARRAYS = ("sample_ids", "train_index", "train_distance", "heldout_index", "heldout_distance",
          "generated_index", "generated_distance", "copies_index", "copies_distance")  # fmt: skip


def save_evidence(path: Path, evidence: Evidence) -> None:
    """One uncompressed .npz (no object arrays: the strings are 0-d unicode)."""
    arrays = {name: getattr(evidence, name) for name in ARRAYS if getattr(evidence, name) is not None}
    with path.open("wb") as handle:
        np.savez(handle, format=np.array(FORMAT), space=np.array(evidence.space),
                 metric=np.array(evidence.metric), copies_space=np.array(evidence.copies_space),
                 copy_threshold=np.array(evidence.copy_threshold), **arrays)  # fmt: skip


def load_evidence(path: Path) -> Evidence:
    """ValueError when the file is not evidence of this format."""
    with np.load(path, allow_pickle=False) as data:
        if "format" not in data.files or int(data["format"]) != FORMAT:
            raise ValueError(f"{path.name}: not a neighbour-evidence file of format {FORMAT}")
        arrays = {name: data[name] for name in ARRAYS if name in data.files}
        return Evidence(space=str(data["space"]), metric=str(data["metric"]),
                        copies_space=str(data["copies_space"]), copy_threshold=float(data["copy_threshold"]),
                        **arrays)  # fmt: skip
