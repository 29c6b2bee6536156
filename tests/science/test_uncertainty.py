"""SPEC §7: bootstrap over repetitions, confidently memorized samples, ranking stability, adaptive stop."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from models.audit import assemble, combine, fold_assignment, run_audit, train_unit
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.uncertainty import (
    RepetitionSums,
    assess,
    bootstrap_draws,
    bootstrap_scores,
    cumulative_scores,
    ranking_overlaps,
    repetition_sums,
    stop_point,
    top_k,
    top_k_size,
    weighted_scores,
)


def _log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _brute_force_bootstrap(
    folds_of: np.ndarray, loglik: np.ndarray, folds: int, draws: np.ndarray
) -> np.ndarray:
    """M* per resample and sample by an explicit loop: the models of the drawn repetitions, each
    repetition as often as it was drawn, split into in- and out-models, log-mean-exp (SPEC §1, §7)."""
    n = folds_of.shape[1]
    out = np.empty((len(draws), n))
    for b, drawn in enumerate(draws):
        for i in range(n):
            ins: list[float] = []
            outs: list[float] = []
            for rep in drawn:
                for fold in range(folds):
                    value = float(loglik[rep * folds + fold, i])
                    (outs if folds_of[rep, i] == fold else ins).append(value)
            out[b, i] = _log_mean_exp(ins) - _log_mean_exp(outs)
    return out


@pytest.mark.parametrize("spread", [5.0, 2000.0])  # 2000 nats: drawn terms underflow next to undrawn ones
def test_bootstrap_matches_a_brute_force_resampling_loop(spread: float) -> None:
    rng = np.random.default_rng(0)
    n, folds, repeats, resamples = 13, 3, 4, 40
    folds_of = fold_assignment(n, folds, repeats, seed=2)
    loglik = rng.normal(-50.0, spread, size=(folds * repeats, n))
    sums = repetition_sums(folds_of, np.arange(folds * repeats), loglik)
    got = bootstrap_scores(sums, resamples=resamples, seed=7)
    expected = _brute_force_bootstrap(folds_of, loglik, folds, bootstrap_draws(repeats, resamples, 7))
    np.testing.assert_allclose(got.se, expected.std(axis=0, ddof=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.lo, np.percentile(expected, 5, axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.hi, np.percentile(expected, 95, axis=0), rtol=1e-9, atol=1e-9)
    assert np.all(got.lo <= got.hi) and np.all(got.se > 0)


def test_bootstrap_draws_are_seeded_and_repeat_repetitions() -> None:
    draws = bootstrap_draws(10, 200, seed=3)
    assert draws.shape == (200, 10) and draws.min() >= 0 and draws.max() <= 9
    np.testing.assert_array_equal(draws, bootstrap_draws(10, 200, seed=3))
    assert not np.array_equal(draws, bootstrap_draws(10, 200, seed=4))
    assert any(len(set(row.tolist())) < 10 for row in draws)  # with replacement


def test_all_repetitions_once_is_the_combined_score() -> None:
    rng = np.random.default_rng(1)
    folds_of = fold_assignment(40, 5, 3, seed=0)
    loglik = rng.normal(-100.0, 30.0, size=(15, 40))
    sums = repetition_sums(folds_of, np.arange(15), loglik)
    np.testing.assert_allclose(
        weighted_scores(sums, np.ones((1, 3)))[0], combine(folds_of, np.arange(15), loglik).M, rtol=1e-12
    )
    # row l of the cumulative scores uses repetitions 1..l, i.e. models 0 .. 5l - 1
    cumulative = cumulative_scores(sums)
    for rep in range(3):
        ids = np.arange(5 * (rep + 1))
        np.testing.assert_allclose(cumulative[rep], combine(folds_of, ids, loglik[ids]).M, rtol=1e-12)


def test_one_repetition_has_no_interval() -> None:
    folds_of = fold_assignment(30, 3, 1, seed=0)
    loglik = np.random.default_rng(0).normal(size=(3, 30))
    scores = combine(folds_of, np.arange(3), loglik).M
    result = assess(folds_of, np.arange(3), loglik, scores, seed=0)
    assert np.isnan(result.score_se).all() and np.isnan(result.score_lo).all()
    assert result.n_confident is None and not result.confident.any()
    assert result.stability == [] and result.repeats == 1


def test_confidently_memorized_means_the_lower_bound_clears_the_threshold() -> None:
    rng = np.random.default_rng(5)
    n, folds, repeats = 200, 4, 6
    folds_of = fold_assignment(n, folds, repeats, seed=1)
    loglik = rng.normal(-20.0, 0.3, size=(folds * repeats, n))
    is_out = folds_of[np.arange(folds * repeats) // folds] == (np.arange(folds * repeats) % folds)[:, None]
    # sample 0: every out-model is much worse (memorized, consistently); sample 1: the in-models of one
    # repetition are far better, the others see nothing special (a fluke of one fold layout)
    loglik[:, 0] -= np.where(is_out[:, 0], 6.0, 0.0)
    loglik[:, 1] += np.where(~is_out[:, 1] & (np.arange(folds * repeats) // folds == 0), 40.0, 0.0)
    scores = combine(folds_of, np.arange(folds * repeats), loglik).M
    result = assess(folds_of, np.arange(folds * repeats), loglik, scores, seed=0)
    assert scores[0] > result.threshold and scores[1] > result.threshold  # both highly memorized
    assert result.confident[0] and not result.confident[1]  # one outlier repetition is not confidence
    assert result.score_hi[1] - result.score_lo[1] > 10 * (result.score_hi[0] - result.score_lo[0])
    np.testing.assert_array_equal(result.confident, result.score_lo > result.threshold)
    assert result.n_confident == int(result.confident.sum())
    assert len(result.stability) == repeats - 1 and result.top_k == 10


def test_top_k_size_and_order() -> None:
    assert [top_k_size(n) for n in (5, 500, 1000, 1001, 60_000)] == [5, 10, 10, 11, 600]
    scores = np.array([1.0, np.nan, 3.0, 3.0, -2.0])
    assert top_k(scores, 4).tolist() == [2, 3, 0, 4]  # ties by id, NaN last


def test_ranking_overlaps_on_a_constructed_case() -> None:
    n = 50
    base = -np.arange(n, dtype=np.float64)  # top 10: samples 0..9
    swapped = base.copy()
    swapped[[8, 9, 10, 11]] = swapped[[10, 11, 8, 9]]  # 8, 9 leave the top 10; 10, 11 enter
    rows = np.stack([base, swapped, swapped, base])
    assert ranking_overlaps(rows, 10) == [0.8, 1.0, 0.8]


def _sums_from_scores(rows: np.ndarray) -> RepetitionSums:
    """Repetition sums whose cumulative M after l repetitions is rows[l - 1] (one in- and one
    out-model per repetition; equal in-model likelihoods, out-model chosen to give the target)."""
    repeats, n = rows.shape
    log_in = np.zeros((repeats, n))
    log_out = np.empty((repeats, n))
    total = np.zeros(n)  # log sum of exp(b) so far
    for rep in range(repeats):
        # V after rep + 1 repetitions must be -rows[rep]: log sum exp(b) = -rows[rep] + log(rep + 1)
        target = -rows[rep] + math.log(rep + 1)
        log_out[rep] = target + np.log1p(-np.exp(total - target)) if rep else target
        total = target
    ones = np.ones((repeats, n), np.int64)
    return RepetitionSums(np.arange(repeats), log_in, ones, log_out, ones)


def test_stop_rule_on_constructed_cases() -> None:
    assert stop_point([0.5, 0.9, 0.95, 0.97], 0.9) == 4  # overlap_3 and overlap_4 are the first pair
    assert stop_point([0.95, 0.95, 0.2], 0.9) == 3
    assert stop_point([0.95, 0.5, 0.95, 0.5], 0.9) is None  # never two in a row
    assert stop_point([1.0], 0.9) is None  # L = 2: there is no pair
    # through the scores: rankings that settle after the third repetition
    n = 40
    base = np.linspace(0.1, 0.0, n)  # small steps keep the constructed out-model sums increasing
    other = base.copy()
    other[:5], other[20:25] = base[20:25], base[:5]  # half of the top 10 differs
    rows = np.stack([other, base, other, base, base, base])
    sums = _sums_from_scores(rows)
    np.testing.assert_allclose(cumulative_scores(sums), rows, atol=1e-9)
    overlaps = ranking_overlaps(cumulative_scores(sums), 10)
    assert overlaps == [0.5, 0.5, 0.5, 1.0, 1.0]
    assert stop_point(overlaps, 0.9) == 6


@pytest.mark.slow
def test_bootstrap_is_fast_enough_for_sixty_thousand_samples() -> None:
    # n = 60k, L = 10, K = 10, B = 200: the size of the paper's MNIST audit
    rng = np.random.default_rng(0)
    n, folds, repeats = 60_000, 10, 10
    folds_of = fold_assignment(n, folds, repeats, seed=0)
    loglik = rng.normal(-100.0, 3.0, size=(folds * repeats, n))
    scores = combine(folds_of, np.arange(folds * repeats), loglik).M
    started = time.perf_counter()
    result = assess(folds_of, np.arange(folds * repeats), loglik, scores, seed=0)
    seconds = time.perf_counter() - started
    assert result.score_se.shape == (n,) and np.isfinite(result.score_se).all()
    assert len(result.stability) == 9 and result.top_k == 600
    assert seconds < 60  # measured ~3 s on the 2-core CI VM (docs/science.md)


# ------------------------------------------------------------------------------- through run_audit


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:60] / 16.0).astype(np.float32)[:, None]  # (60, 1, 8, 8)


def _tiny(repeats: int, **audit: object) -> tuple[ModelConfig, TrainConfig, AuditConfig]:
    cfg = AuditConfig(folds=2, repeats=repeats, is_samples=4, device="cpu", **audit)  # type: ignore[arg-type]
    return ModelConfig(hidden=(16,), latent=2), TrainConfig(epochs=1, batch_size=16), cfg


def test_audit_result_carries_the_uncertainty(digits: np.ndarray) -> None:
    result = run_audit(digits, *_tiny(3))
    assert result.score_se.shape == result.score_lo.shape == result.score_hi.shape == (60,)
    assert np.all(result.score_lo <= result.score_hi) and np.isfinite(result.score_se).all()
    assert result.repeats_used == 3 and len(result.stability) == 2
    threshold = result.quantiles["0.95"]
    np.testing.assert_array_equal(result.confident, result.score_lo > threshold)
    assert result.n_confident == int(result.confident.sum())
    one = run_audit(digits, *_tiny(1))
    assert np.isnan(one.score_se).all() and one.n_confident is None and one.stability == []


def test_adaptive_stop_trains_fewer_repetitions_and_keeps_their_scores(digits: np.ndarray) -> None:
    heldout = digits[:7]
    # any overlap at all counts as stable: the rule fires at the first chance, l = 3
    stopped = run_audit(digits, *_tiny(5, stop_when_stable=1e-9), heldout=heldout)
    assert stopped.repeats_used == 3 and stopped.model_ids.tolist() == list(range(6))
    assert stopped.loglik.shape == (6, 60) and len(stopped.stability) == 2
    assert stopped.samples is not None and stopped.samples.shape == (7, 1, 8, 8)  # |S| = |H| still
    full = run_audit(digits, *_tiny(5), heldout=heldout)
    assert full.repeats_used == 5
    # the models are the same whichever way they were trained: the kept scores are those of reps 1..3
    first_three = combine(full.folds_of, full.model_ids[:6], full.loglik[:6])
    np.testing.assert_allclose(stopped.scores.M, first_three.M, atol=1e-5)
    np.testing.assert_allclose(stopped.stability, full.stability[:2])


def test_assemble_applies_the_stop_rule_to_units_trained_in_full(digits: np.ndarray) -> None:
    model_cfg, train_cfg, audit_cfg = _tiny(4, stop_when_stable=1e-9)
    cpu = torch.device("cpu")
    units = [train_unit(digits, model_cfg, train_cfg, audit_cfg, [m], device=cpu) for m in range(8)]
    result = assemble(units[::-1], 60, audit_cfg, None, wall=1.0)
    assert result.repeats_used == 3 and result.model_ids.tolist() == list(range(6))
    in_process = run_audit(digits, model_cfg, train_cfg, audit_cfg)
    np.testing.assert_allclose(result.scores.M, in_process.scores.M, atol=1e-5)
    without = AuditConfig(**{**audit_cfg.to_dict(), "stop_when_stable": None})
    overlaps = assemble(units, 60, without, None, wall=1.0).stability
    strict = AuditConfig(**{**audit_cfg.to_dict(), "stop_when_stable": 1.0})  # identical top-k twice
    assert assemble(units, 60, strict, None, wall=1.0).repeats_used == (stop_point(overlaps, 1.0) or 4)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, True, "0.9"])
def test_stop_when_stable_is_validated(value: object) -> None:
    with pytest.raises(ValueError, match="stop_when_stable"):
        AuditConfig(stop_when_stable=value)  # type: ignore[arg-type]
    assert AuditConfig().stop_when_stable is None


def test_repetition_aligned_units_never_mix_repetitions_and_keep_every_model() -> None:
    from models.units import complete_repetitions, repetition_aligned

    planned = [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]  # K = 3, L = 8, size 8
    assert repetition_aligned(planned, 3) == [list(range(r * 3, r * 3 + 3)) for r in range(8)]
    small = repetition_aligned([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], 5)  # size 2 < K = 5
    assert small == [[0, 1], [2], [3, 4], [5, 6], [7], [8, 9]]
    assert all(len({m // 5 for m in unit}) == 1 and len(unit) <= 2 for unit in small)
    assert complete_repetitions({0, 1, 2, 3, 4, 6, 7, 8, 9}, 5, 2) == 1  # model 5 missing
    assert complete_repetitions(set(range(10)), 5, 2) == 2 and complete_repetitions(set(), 5, 2) == 0
