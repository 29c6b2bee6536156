"""Fold layout (SPEC §1 step 1) and the log-mean-exp combination (step 4) against a brute-force loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.audit import combine, fold_assignment
from models.folds import heldout_indices, training_indices


@pytest.mark.parametrize(("n", "folds"), [(10, 3), (23, 5), (40, 10), (7, 7)])
def test_each_repetition_is_a_partition_with_the_extra_indices_in_the_first_folds(n: int, folds: int) -> None:
    assignment = fold_assignment(n, folds, repeats=3, seed=4)
    assert assignment.shape == (3, n)
    for row in assignment:
        sizes = np.bincount(row, minlength=folds)
        expected = [n // folds + (1 if k < n % folds else 0) for k in range(folds)]
        assert sizes.tolist() == expected


def test_fold_assignment_is_seeded_and_repetitions_differ() -> None:
    a = fold_assignment(50, 5, repeats=4, seed=1)
    assert np.array_equal(a, fold_assignment(50, 5, repeats=4, seed=1))
    assert not np.array_equal(a, fold_assignment(50, 5, repeats=4, seed=2))
    assert len({row.tobytes() for row in a}) == 4
    # a repetition does not depend on how many repetitions are asked for
    assert np.array_equal(fold_assignment(50, 5, repeats=2, seed=1), a[:2])


def test_model_training_and_heldout_sets() -> None:
    assignment = fold_assignment(20, 4, repeats=2, seed=0)
    model = 1 * 4 + 2  # repetition 1, fold 2
    held, train = heldout_indices(assignment, model), training_indices(assignment, model)
    assert np.all(assignment[1, held] == 2) and np.all(assignment[1, train] != 2)
    assert sorted([*held, *train]) == list(range(20))


@pytest.mark.parametrize(("n", "folds"), [(1, 2), (5, 6), (5, 1)])
def test_bad_fold_counts_name_the_field(n: int, folds: int) -> None:
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(n, folds, repeats=1, seed=0)


def _brute_force(
    folds_of: np.ndarray, model_ids: np.ndarray, loglik: np.ndarray, i: int
) -> tuple[float, float]:
    folds = folds_of.max() + 1
    ins: list[float] = []
    outs: list[float] = []
    for row, m in enumerate(model_ids):
        (outs if folds_of[m // folds, i] == m % folds else ins).append(loglik[row, i])

    def log_mean_exp(values: list[float]) -> float:
        if not values:
            return math.nan
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values) / len(values))

    return log_mean_exp(ins), log_mean_exp(outs)


def test_combine_matches_a_brute_force_loop_on_all_models() -> None:
    rng = np.random.default_rng(0)
    folds_of = fold_assignment(30, 5, repeats=3, seed=0)
    model_ids = np.arange(15)
    loglik = rng.normal(-100, 30, size=(15, 30))  # wide spread: a mean of logs would differ a lot
    scores = combine(folds_of, model_ids, loglik)
    for i in range(30):
        u, v = _brute_force(folds_of, model_ids, loglik, i)
        assert scores.U[i] == pytest.approx(u, rel=1e-12)
        assert scores.V[i] == pytest.approx(v, rel=1e-12)
        assert scores.M[i] == pytest.approx(u - v, rel=1e-9, abs=1e-9)
    assert np.all(scores.n_in == 12) and np.all(scores.n_out == 3)


def test_combine_on_a_subset_is_provisional_with_nan_where_a_side_is_missing() -> None:
    rng = np.random.default_rng(1)
    folds_of = fold_assignment(12, 3, repeats=2, seed=5)
    model_ids = np.array([4, 0])  # rep 1 fold 1, rep 0 fold 0; any order
    loglik = rng.normal(-10, 2, size=(2, 12))
    scores = combine(folds_of, model_ids, loglik)
    for i in range(12):
        u, v = _brute_force(folds_of, model_ids, loglik, i)
        np.testing.assert_equal(np.isnan(scores.U[i]), math.isnan(u))
        np.testing.assert_equal(np.isnan(scores.V[i]), math.isnan(v))
        if not math.isnan(u) and not math.isnan(v):
            assert scores.M[i] == pytest.approx(u - v)
    assert np.isnan(scores.M[scores.n_out == 0]).all() and (scores.n_out == 0).any()


def test_combine_is_log_of_mean_probability_not_mean_of_logs() -> None:
    folds_of = np.array([[0, 1]])  # one repetition, two folds, sample 0 in fold 0
    loglik = np.array([[0.0, 0.0], [-10.0, 0.0], [np.log(3.0), 0.0]])
    # duplicate ids of fold 1 act as extra in-models of sample 0 here
    scores = combine(folds_of, np.array([0, 1, 1]), loglik)
    assert scores.U[0] == pytest.approx(np.log((np.exp(-10.0) + 3.0) / 2))
    assert scores.V[0] == pytest.approx(0.0)
