"""Writing a job's per-sample scores in bulk: binary COPY on PostgreSQL, executemany on SQLite.

A write replaces the job's whole score set in one transaction, so readers see either the old set
or the new one: on PostgreSQL by swapping the job's partition for a staging table filled by COPY and
indexed afterwards (app/services/score_partitions.py), on SQLite by DELETE and INSERT. Writers are
serialised per job by first touching the job row (a row lock on PostgreSQL, the write lock on SQLite)
with a guarded UPDATE that only applies while the job is active: a finished job's scores never change.
A write based on fewer units than the stored set is dropped, so a late provisional write can never
overwrite a newer or final one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import column, delete, insert, select
from sqlalchemy import table as sa_table
from sqlalchemy.orm import Session

from app.db import Job, SampleScore, is_postgres, utcnow
from app.faults import fault_point
from app.lifecycle import JOB_ACTIVE, guarded_update
from app.services.pg_copy import binary_copy_chunks
from app.services.score_partitions import stage_job_scores

COLUMNS = ("job_id", "sample_id", "score", "log_p_in", "log_p_out", "score_se", "score_lo", "score_hi",
           "n_in", "n_out", "rank")  # fmt: skip
INSERT_COLUMNS = (*COLUMNS, "rho", "nearest_copy_count", "within_tau_count")


@dataclass(frozen=True)
class ScoreArrays:
    score: np.ndarray  # (N,) float64, M = U - V; NaN where undefined
    log_p_in: np.ndarray  # (N,) U
    log_p_out: np.ndarray  # (N,) V
    n_in: np.ndarray  # (N,) int
    n_out: np.ndarray  # (N,) int
    rho: np.ndarray | None = None  # (N,) GAN copy tests: NN ratio
    nearest_copy_count: np.ndarray | None = None  # (N,) GAN jobs: generated samples whose nearest is i
    within_tau_count: np.ndarray | None = None  # (N,) GAN jobs: SPEC §5 generated samples within tau of i
    score_se: np.ndarray | None = None  # (N,) SPEC §7 bootstrap standard error of M (final sets, L >= 2)
    score_lo: np.ndarray | None = None  # (N,) 5% percentile of the bootstrap M
    score_hi: np.ndarray | None = None  # (N,) 95% percentile of the bootstrap M

    @property
    def has_gan_columns(self) -> bool:
        return any(v is not None for v in (self.rho, self.nearest_copy_count, self.within_tau_count))

    def interval(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """score_se, score_lo, score_hi; NaN (stored NULL) where the set has none."""
        missing = np.full(len(self.score), np.nan)
        return tuple(  # type: ignore[return-value]
            missing if v is None else np.asarray(v, np.float64)
            for v in (self.score_se, self.score_lo, self.score_hi)
        )


def ranks(score: np.ndarray) -> np.ndarray:
    """1 = most memorized; ties by sample id; non-finite scores rank last (as the index sorts them)."""
    finite = np.isfinite(score)
    key = np.where(finite, -score, np.inf)
    order = np.lexsort((np.arange(len(score)), key, ~finite))  # (N,) sample ids, best first
    out = np.empty(len(score), dtype=np.int64)
    out[order] = np.arange(1, len(score) + 1)
    return out


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]


def _rows(job_id: str, arrays: ScoreArrays) -> list[tuple[object, ...]]:
    count = len(arrays.score)
    missing = [None] * count
    rho = missing if arrays.rho is None else _nullable(arrays.rho)
    nearest = missing if arrays.nearest_copy_count is None else _nullable(arrays.nearest_copy_count)
    within = missing if arrays.within_tau_count is None else _nullable(arrays.within_tau_count)
    se, lo, hi = (_nullable(values) for values in arrays.interval())
    return list(zip(
        [job_id] * count, range(count), _nullable(arrays.score), _nullable(arrays.log_p_in),
        _nullable(arrays.log_p_out), se, lo, hi, arrays.n_in.astype(int).tolist(),
        arrays.n_out.astype(int).tolist(), ranks(arrays.score).tolist(), rho, nearest, within, strict=True,
    ))


def _copy_binary(session: Session, table: str, job_id: str, arrays: ScoreArrays) -> None:
    se, lo, hi = arrays.interval()
    columns = {"score": arrays.score, "log_p_in": arrays.log_p_in, "log_p_out": arrays.log_p_out,
               "score_se": se, "score_lo": lo, "score_hi": hi,
               "n_in": arrays.n_in, "n_out": arrays.n_out, "rank": ranks(arrays.score)}
    driver = session.connection().connection.driver_connection
    statement = f'COPY "{table}" ({", ".join(COLUMNS)}) FROM STDIN (FORMAT BINARY)'
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for chunk in binary_copy_chunks(job_id, columns):
            copy.write(chunk)


def _insert_rows(session: Session, rows: list[tuple[object, ...]], table: str | None = None) -> None:
    values = [dict(zip(INSERT_COLUMNS, row, strict=True)) for row in rows]
    if table is None:
        session.execute(insert(SampleScore), values)
    else:
        session.execute(insert(sa_table(table, *(column(name) for name in INSERT_COLUMNS))), values)


def _load(session: Session, job_id: str, arrays: ScoreArrays) -> Callable[[str], None]:
    """Fill a PostgreSQL staging table: binary COPY of the VAE columns, else (GAN columns) an insert."""
    def load(table: str) -> None:
        if arrays.has_gan_columns:  # the binary COPY carries the VAE columns only
            _insert_rows(session, _rows(job_id, arrays), table)
        else:
            _copy_binary(session, table, job_id, arrays)

    return load


def write_scores(session: Session, job_id: str, arrays: ScoreArrays, units: int, provisional: bool,
                 *, commit: bool = True) -> bool:
    """Replace the job's scores with ``arrays`` (based on ``units`` finished units). Commits, unless
    ``commit=False`` (the finishing step commits the final set together with the job's success).

    Returns False (writing nothing) when the job is no longer active or the stored set is already based
    on at least as many units.
    """
    if not guarded_update(session, Job, job_id, when=JOB_ACTIVE, updated_at=utcnow()):  # lock first
        _end(session, commit)
        return False
    stored_units, stored_provisional = session.execute(
        select(Job.scores_units, Job.scores_provisional).where(Job.id == job_id)
    ).one()
    has_final = stored_units > 0 and not stored_provisional
    if has_final or (provisional and stored_units >= units):
        _end(session, commit)
        return False
    swap = None
    if is_postgres(session):  # the job's partition is swapped for a freshly indexed one (score_partitions)
        swap = stage_job_scores(session, job_id, _load(session, job_id, arrays))
    else:
        session.execute(delete(SampleScore).where(SampleScore.job_id == job_id))
        _insert_rows(session, _rows(job_id, arrays))
    guarded_update(session, Job, job_id, when=JOB_ACTIVE, scores_units=units, scores_provisional=provisional)
    fault_point("score_write_provisional" if provisional else "score_write_final")
    if swap is not None:
        swap()  # last: the job's readers wait only from here to the commit
    if commit:
        session.commit()
    return True


def _end(session: Session, commit: bool) -> None:
    if commit:
        session.rollback()  # release the row lock; nothing was written
