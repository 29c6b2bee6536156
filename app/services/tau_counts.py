"""SPEC §5's per-training-sample counts of every tau of a GAN job (table tau_counts, revision 0007).

Written by the finishing step in the transaction that stores the final scores; only samples with a
non-zero count at a tau get a row (most training samples are copied by nothing), so a missing row
reads as zero. Read back per tau for GET /jobs/{id}/samples/{sample_id} (``counts_of_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.db import TauCount


class TauCountArrays(Protocol):
    @property
    def tau_index(self) -> int: ...
    @property
    def tau(self) -> float: ...
    @property
    def within_tau_count(self) -> np.ndarray: ...  # (N,)
    @property
    def nearest_copy_count(self) -> np.ndarray | None: ...  # (N,)


def write_tau_counts(session: Session, job_id: str, taus: Sequence[TauCountArrays]) -> int:
    """Replace the job's rows (no commit: the caller's transaction holds the final scores). Returns the
    number of rows written."""
    session.execute(delete(TauCount).where(TauCount.job_id == job_id))
    rows: list[dict[str, Any]] = []
    for counts in taus:
        within = np.asarray(counts.within_tau_count).astype(np.int64)
        nearest = None if counts.nearest_copy_count is None else np.asarray(counts.nearest_copy_count)
        nonzero = within > 0 if nearest is None else (within > 0) | (nearest > 0)
        for sample_id in np.flatnonzero(nonzero).tolist():
            rows.append({"job_id": job_id, "tau_index": counts.tau_index, "sample_id": sample_id,
                         "tau": counts.tau, "within_tau_count": int(within[sample_id]),
                         "nearest_copy_count": None if nearest is None else int(nearest[sample_id])})
    if rows:
        session.execute(insert(TauCount), rows)
    return len(rows)


def counts_of_sample(session: Session, job_id: str, sample_id: int) -> list[dict[str, Any]]:
    """The sample's non-zero counts, one entry per tau (tau index order)."""
    query = (select(TauCount.tau_index, TauCount.tau, TauCount.within_tau_count, TauCount.nearest_copy_count)
             .where(TauCount.job_id == job_id, TauCount.sample_id == sample_id).order_by(TauCount.tau_index))
    return [{"tau_index": index, "tau": tau, "within_tau_count": within, "nearest_copy_count": nearest}
            for index, tau, within, nearest in session.execute(query)]
