"""Cross-validation layout and the log-mean-exp combination of SPEC §1.

Model id ``m = l * folds + k`` is the model of repetition l trained without fold k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.noise import Purpose, derive_seed


def fold_sizes(n: int, folds: int) -> np.ndarray:
    """Contiguous fold sizes: the first n mod K folds get one extra index."""
    sizes = np.full(folds, n // folds, dtype=np.int64)
    sizes[: n % folds] += 1
    return sizes


def fold_assignment(n: int, folds: int, repeats: int, seed: int) -> np.ndarray:
    """(repeats, n) int64: the fold of sample i in repetition l (SPEC §1 step 1)."""
    if folds < 2 or folds > n:
        raise ValueError(f"folds: must be between 2 and the number of samples ({n}); got {folds}")
    bounds = np.concatenate([[0], np.cumsum(fold_sizes(n, folds))])
    assignment = np.empty((repeats, n), dtype=np.int64)
    for rep in range(repeats):
        permutation = np.random.default_rng(derive_seed(seed, Purpose.FOLDS, rep)).permutation(n)
        for fold in range(folds):
            assignment[rep, permutation[bounds[fold] : bounds[fold + 1]]] = fold
    return assignment


def model_fold(model_id: int, folds: int) -> tuple[int, int]:
    """Model id -> (repetition l, held-out fold k)."""
    return model_id // folds, model_id % folds


def training_indices(assignment: np.ndarray, model_id: int) -> np.ndarray:
    rep, fold = model_fold(model_id, int(assignment.max()) + 1)
    return np.flatnonzero(assignment[rep] != fold)


def heldout_indices(assignment: np.ndarray, model_id: int) -> np.ndarray:
    rep, fold = model_fold(model_id, int(assignment.max()) + 1)
    return np.flatnonzero(assignment[rep] == fold)


@dataclass(frozen=True)
class Scores:
    """Per-sample scores (N,): U (in-models), V (out-models), M = U - V, and how many models of each
    kind they are based on. NaN where a sample has no in- or no out-model yet (provisional)."""

    U: np.ndarray
    V: np.ndarray
    M: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _log_mean_exp_masked(loglik: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise log-mean-exp of loglik (u, N) over rows where mask is True; NaN for empty columns."""
    from scipy.special import logsumexp  # here, so that training a unit needs only torch and numpy

    counts = mask.sum(axis=0)
    masked = np.where(mask, loglik, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = logsumexp(masked, axis=0) - np.log(counts)
    return np.where(counts > 0, total, np.nan), counts


def combine(folds_of: np.ndarray, model_ids: np.ndarray, loglik: np.ndarray) -> Scores:
    """U, V, M per sample from log p(x_i | model) of any subset of models (SPEC §1 step 4).

    folds_of: (L, N) fold assignment; model_ids: (u,); loglik: (u, N) natural logs.
    """
    model_ids = np.asarray(model_ids, dtype=np.int64)
    loglik = np.asarray(loglik, dtype=np.float64)
    folds = int(folds_of.max()) + 1
    if loglik.shape != (len(model_ids), folds_of.shape[1]):
        raise ValueError(f"loglik: expected shape {(len(model_ids), folds_of.shape[1])}, got {loglik.shape}")
    reps, held = model_ids // folds, model_ids % folds
    is_out = folds_of[reps] == held[:, None]  # (u, N): sample i is in the held-out fold of the model
    U, n_in = _log_mean_exp_masked(loglik, ~is_out)
    V, n_out = _log_mean_exp_masked(loglik, is_out)
    return Scores(U=U, V=V, M=U - V, n_in=n_in, n_out=n_out)
