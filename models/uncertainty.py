"""Uncertainty of M and stability of its ranking (SPEC §7), from the L repetitions of the fold layout.

The L repetitions are independent draws of the fold partition, so resampling them gives the score's
uncertainty without training anything more. Everything is built on per-repetition sums: for sample i
and repetition l,

    a_l(i) = log sum over the in-models of repetition l of p(x_i | theta),   n_l(i) = their count (K-1)
    b_l(i) = the same over its out-model(s),                                  m_l(i) = their count (1)

so that for any multiset of repetitions with multiplicities c_l (a bootstrap resample, the first l
repetitions, or all of them)

    U = log sum_l c_l exp(a_l) - log sum_l c_l n_l,   V = log sum_l c_l exp(b_l) - log sum_l c_l m_l,

which is exactly SPEC §1's log-mean-exp over the chosen models (a repetition drawn twice counts
twice). With c_l = 1 for all l it is ``models.folds.combine``. The weighted sums over repetitions are
one (resamples x L) @ (L x N) matrix product after a per-sample shift by the largest term; the rare
entries where the drawn terms all underflow are recomputed with an exact log-sum-exp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.noise import Purpose, derive_seed

BOOTSTRAP_RESAMPLES = 200
INTERVAL_PERCENTILES = (5.0, 95.0)  # a 90% interval
CONFIDENT_QUANTILE = 0.95  # "highly memorized" threshold of SPEC §1 step 5
_UNDERFLOW = 1e-200  # below this a shifted sum is recomputed exactly
_SAMPLE_CHUNK = 8192  # samples per bootstrap block: 200 x 8192 float64 = 13 MB per array


@dataclass(frozen=True)
class RepetitionSums:
    """Per repetition (rows, in ``repetitions`` order) and sample (columns): see the module docstring."""

    repetitions: np.ndarray  # (L,) repetition indices present, ascending
    log_in: np.ndarray  # (L, N) a_l(i); -inf where repetition l has no in-model of sample i
    n_in: np.ndarray  # (L, N) n_l(i)
    log_out: np.ndarray  # (L, N) b_l(i); -inf where repetition l has no out-model of sample i
    n_out: np.ndarray  # (L, N) m_l(i)

    def columns(self, part: slice) -> RepetitionSums:
        """The same for a slice of the samples."""
        return RepetitionSums(
            self.repetitions,
            self.log_in[:, part],
            self.n_in[:, part],
            self.log_out[:, part],
            self.n_out[:, part],
        )


def repetition_sums(folds_of: np.ndarray, model_ids: np.ndarray, loglik: np.ndarray) -> RepetitionSums:
    """Per-repetition log-sums of in- and out-model likelihoods. folds_of (L_all, N), loglik (u, N)."""
    from scipy.special import logsumexp  # here, so that training a unit needs only torch and numpy

    model_ids = np.asarray(model_ids, dtype=np.int64)
    loglik = np.asarray(loglik, dtype=np.float64)
    folds = int(folds_of.max()) + 1
    reps, held = model_ids // folds, model_ids % folds
    present = np.unique(reps)
    shape = (len(present), folds_of.shape[1])
    log_in, log_out = np.full(shape, -np.inf), np.full(shape, -np.inf)
    n_in, n_out = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for row, rep in enumerate(present):
        mine = reps == rep
        is_out = folds_of[rep][None, :] == held[mine][:, None]  # (models of rep, N)
        values = loglik[mine]
        for log_sum, count, mask in ((log_in, n_in, ~is_out), (log_out, n_out, is_out)):
            count[row] = mask.sum(0)
            log_sum[row] = logsumexp(np.where(mask, values, -np.inf), axis=0)
    return RepetitionSums(present, log_in, n_in, log_out, n_out)


def _weighted_log_sum(log_values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log sum_l w_bl exp(v_li) for weights (B, L) >= 0 and values (L, N) -> (B, N); -inf for no mass."""
    finite = np.isfinite(log_values)
    top = np.where(finite.any(0), np.where(finite, log_values, -np.inf).max(0), 0.0)  # (N,)
    scaled = np.where(finite, np.exp(log_values - top), 0.0)  # (L, N) in [0, 1]
    total = weights @ scaled  # (B, N)
    with np.errstate(divide="ignore"):
        out = top + np.log(total)
    from scipy.special import logsumexp

    rows, cols = np.nonzero((total < _UNDERFLOW) & ((weights > 0).astype(np.float64) @ finite > 0))
    if rows.size:  # every drawn term is tiny next to an undrawn one: do these exactly
        with np.errstate(divide="ignore"):
            terms = log_values[:, cols].T + np.log(weights[rows])  # (k, L)
        out[rows, cols] = logsumexp(terms, axis=1)
    return out


def weighted_scores(sums: RepetitionSums, weights: np.ndarray) -> np.ndarray:
    """M for each weighting of the repetitions: weights (B, L) -> (B, N); NaN without in- or out-models."""
    weights = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = _weighted_log_sum(sums.log_in, weights) - np.log(weights @ sums.n_in)
        v = _weighted_log_sum(sums.log_out, weights) - np.log(weights @ sums.n_out)
        m = u - v
    return np.where(np.isfinite(m), m, np.nan)


def bootstrap_draws(repeats: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, repeats) repetition indices drawn with replacement, seeded by the audit seed."""
    rng = np.random.default_rng(derive_seed(seed, Purpose.BOOTSTRAP, repeats))
    return rng.integers(0, repeats, size=(resamples, repeats))


@dataclass(frozen=True)
class Bootstrap:
    se: np.ndarray  # (N,) standard deviation of M* over the resamples (ddof = 1); NaN when L = 1
    lo: np.ndarray  # (N,) 5% percentile of M*
    hi: np.ndarray  # (N,) 95% percentile of M*
    resamples: int


def bootstrap_scores(sums: RepetitionSums, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Bootstrap:
    """SPEC §7: resample the L repetitions with replacement; SE and 90% interval of M per sample."""
    repeats, n = sums.log_in.shape
    if repeats < 2:
        missing = np.full(n, np.nan)
        return Bootstrap(missing, missing.copy(), missing.copy(), resamples)
    draws = bootstrap_draws(repeats, resamples, seed)
    counts = (draws[:, :, None] == np.arange(repeats)).sum(1).astype(np.float64)  # (B, L) multiplicities
    se, lo, hi = np.empty(n), np.empty(n), np.empty(n)
    for start in range(0, n, _SAMPLE_CHUNK):
        part = slice(start, min(start + _SAMPLE_CHUNK, n))
        resampled = weighted_scores(sums.columns(part), counts)  # (B, n_chunk)
        se[part] = resampled.std(axis=0, ddof=1)
        lo[part], hi[part] = np.percentile(resampled, INTERVAL_PERCENTILES, axis=0)
    return Bootstrap(se, lo, hi, resamples)


def top_k_size(n: int) -> int:
    """k = max(10, ceil(0.01 n)), at most n."""
    return min(n, max(10, math.ceil(0.01 * n)))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores; NaN last, ties by sample id."""
    return np.argsort(np.where(np.isnan(scores), np.inf, -scores), kind="stable")[:k]


def cumulative_scores(sums: RepetitionSums) -> np.ndarray:
    """(L, N): row l is M computed from the first l + 1 repetitions."""
    repeats = sums.log_in.shape[0]
    return weighted_scores(sums, np.tril(np.ones((repeats, repeats))))


def ranking_overlaps(cumulative: np.ndarray, k: int) -> list[float]:
    """overlap_l = |T_l ∩ T_{l-1}| / k for l = 2..L, T_l the top k of row l - 1 of ``cumulative``."""
    tops = [set(top_k(row, k).tolist()) for row in cumulative]
    return [len(tops[i] & tops[i - 1]) / k for i in range(1, len(tops))]


def stop_point(overlaps: Sequence[float], threshold: float) -> int | None:
    """Repetitions to use under the adaptive stop: the first l with overlap_l >= threshold and
    overlap_{l-1} >= threshold (so l >= 3); None when that never happens. overlaps[j] is overlap_{j+2}."""
    for j in range(1, len(overlaps)):
        if overlaps[j] >= threshold and overlaps[j - 1] >= threshold:
            return j + 2
    return None


@dataclass(frozen=True)
class Uncertainty:
    """SPEC §7 for one audit: per-sample bootstrap interval, confidently memorized samples, stability."""

    score_se: np.ndarray  # (N,) NaN when L = 1
    score_lo: np.ndarray  # (N,)
    score_hi: np.ndarray  # (N,)
    threshold: float  # the 0.95 quantile of M over the training set
    confident: np.ndarray  # (N,) bool: score_lo > threshold (all False when L = 1)
    n_confident: int | None  # None when L = 1 (undefined)
    stability: list[float]  # overlap_l for l = 2..L
    top_k: int
    repeats: int  # L, the repetitions the scores are based on
    resamples: int

    def summary(self, repeats_requested: int) -> dict[str, object]:
        """The SPEC §7 part of a job summary, JSON-safe: the same keys in the local CLI's summary.json
        and in the service's job summary (one function, so the two never drift apart)."""
        return {
            "confidently_memorized": self.n_confident,  # score_lo above the 0.95 quantile; None when L = 1
            "bootstrap": {
                "resamples": self.resamples,
                "interval_percentiles": [int(p) for p in INTERVAL_PERCENTILES],
            },
            "stability": [
                {"repetition": rep, "overlap": float(overlap)}
                for rep, overlap in enumerate(self.stability, start=2)
            ],
            "stability_top_k": self.top_k,
            "repeats_used": self.repeats,
            "repeats_requested": repeats_requested,
            "stopped_early": self.repeats < repeats_requested,
        }


def assess(
    folds_of: np.ndarray,
    model_ids: np.ndarray,
    loglik: np.ndarray,
    scores: np.ndarray,
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Uncertainty:
    """Everything of SPEC §7 from the models' log-likelihoods; ``scores`` is M from all of them."""
    sums = repetition_sums(folds_of, model_ids, loglik)
    boot = bootstrap_scores(sums, resamples, seed)
    finite = np.isfinite(scores)
    threshold = float(np.quantile(scores[finite], CONFIDENT_QUANTILE)) if finite.any() else math.nan
    repeats = len(sums.repetitions)
    with np.errstate(invalid="ignore"):
        confident = boot.lo > threshold  # NaN compares False
    k = top_k_size(len(scores))
    return Uncertainty(
        score_se=boot.se,
        score_lo=boot.lo,
        score_hi=boot.hi,
        threshold=threshold,
        confident=confident,
        n_confident=int(confident.sum()) if repeats >= 2 else None,
        stability=ranking_overlaps(cumulative_scores(sums), k),
        top_k=k,
        repeats=repeats,
        resamples=resamples,
    )


def stable_repetitions(
    folds_of: np.ndarray, model_ids: np.ndarray, loglik: np.ndarray, threshold: float
) -> int | None:
    """How many repetitions the adaptive stop keeps (``stop_point``) given the models trained so far,
    which must be whole repetitions 0..l-1; None while the ranking is not yet stable."""
    sums = repetition_sums(folds_of, model_ids, loglik)
    folds = int(folds_of.max()) + 1
    complete = np.array_equal(sums.repetitions, np.arange(len(sums.repetitions))) and len(model_ids) == (
        folds * len(sums.repetitions)
    )
    if not complete:
        raise ValueError("stop_when_stable: needs whole repetitions 0..l-1 to compare rankings")
    return stop_point(ranking_overlaps(cumulative_scores(sums), top_k_size(folds_of.shape[1])), threshold)
