"""PostgreSQL: every job's scores in a partition of their own, replaced whole by a swap (revision 0008).

``sample_scores`` is partitioned by LIST (job_id). A job's partition ``sample_scores_<digest>`` is itself
partitioned by RANGE (sample_id) and holds exactly one leaf: the job's current score set. A write builds
the new set in a fresh *staging* table (no index yet), so the rows go in by COPY without any index
maintenance, then builds both indexes by sorting (the primary key, and the top-k order
``(score DESC NULLS LAST, sample_id)``: the job id is constant within a partition) and a CHECK that makes
the partition constraint provable without a scan; then, in the same transaction, the old leaf is detached
and dropped and the staging table attached in its place. Readers see the old set or the new one, never a
part: the swap is one transaction.

Locks: the staging table is private until the swap. Attaching a job's own partition the first time takes
SHARE UPDATE EXCLUSIVE on ``sample_scores`` (readers and other jobs' reads are not blocked; two first
writes attach one after the other). Detaching the old leaf takes ACCESS EXCLUSIVE on the job's partition
only, so readers of *that job* wait from the swap (run last) to the commit. The swap waits at most
SWAP_LOCK_TIMEOUT for that job's running readers (e.g. a CSV download of the same job); past it, the rows
are replaced inside the current leaf instead (DELETE + INSERT from the staging table: row-by-row index
maintenance, slow, but it never waits for readers), in the same transaction. No foreign key
to ``jobs``: adding one to each staging table would lock ``jobs`` against every update until commit (and
two concurrent writers would deadlock on it); the writer checks the job row itself (score_writer locks it
first) and jobs are never deleted by the service.

Incremental maintenance of the top-k index, in random order, was where the time went before (a 1M-row
ingest 7.5-16 s, the COPY itself about 1 s): see docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

PARENT = "sample_scores"
# Within a job's partition the job id is one constant: leaving it out of the top-k index halves its sort
# build (float8 + int4 keys instead of text first); queries still say job_id = ..., which prunes to the
# partition, and read this index in order.
TOP_K_COLUMNS = "score DESC NULLS LAST, sample_id"
# Sorting 1M index tuples in memory instead of in temporary files (the default is 64MB), per write only.
MAINTENANCE_WORK_MEM = "256MB"
# How long a swap waits for the job's running readers before it replaces the rows in place instead.
SWAP_LOCK_TIMEOUT = "2s"


def partition_name(job_id: str) -> str:
    """The job's partition (also used by revision 0008: keep the rule)."""
    return f"{PARENT}_{hashlib.sha256(job_id.encode()).hexdigest()[:24]}"


def _literal(job_id: str) -> str:
    return "'" + job_id.replace("'", "''") + "'"


def _leaves(connection: Connection, partition: str) -> list[str]:
    rows = connection.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%(name)s)", {"name": partition})  # fmt: skip
    return [str(row[0]) for row in rows]


def stage_job_scores(session: Session, job_id: str, load: Callable[[str], None]) -> Callable[[], None]:
    """Build the job's new score set in a staging table: the rows ``load(table)`` writes into the empty
    ``table`` (same columns as sample_scores), then its indexes and CHECK. Returns the swap that puts it
    in place of the job's current set; run it last before the commit (the job's readers wait from the swap
    to the commit). Commits nothing."""
    connection = session.connection()
    partition = partition_name(job_id)
    stage = f"{partition}_{uuid.uuid4().hex[:8]}"
    connection.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    connection.exec_driver_sql(f'CREATE TABLE "{stage}" (LIKE {PARENT} INCLUDING DEFAULTS)')
    load(stage)
    connection.exec_driver_sql(f'ALTER TABLE "{stage}" ADD PRIMARY KEY (job_id, sample_id)')
    connection.exec_driver_sql(f'CREATE INDEX ON "{stage}" ({TOP_K_COLUMNS})')
    connection.exec_driver_sql(f'ALTER TABLE "{stage}" ADD CHECK (job_id = {_literal(job_id)})')

    def swap() -> None:
        _swap(session, job_id, partition, stage)

    return swap


def _swap(session: Session, job_id: str, partition: str, stage: str) -> None:
    connection = session.connection()
    exists = connection.exec_driver_sql("SELECT to_regclass(%(name)s)", {"name": partition}).scalar()
    if exists is None:
        connection.exec_driver_sql(f'CREATE TABLE "{partition}" (LIKE {PARENT} INCLUDING DEFAULTS) '
                                   "PARTITION BY RANGE (sample_id)")  # fmt: skip
        connection.exec_driver_sql(f'ALTER TABLE {PARENT} ATTACH PARTITION "{partition}" '
                                   f"FOR VALUES IN ({_literal(job_id)})")  # fmt: skip
    elif not _locked_quickly(session, partition):  # a long reader of this job (a CSV download) holds it
        _copy_in_place(connection, job_id, stage)
        return
    for old in _leaves(connection, partition):
        connection.exec_driver_sql(f'ALTER TABLE "{partition}" DETACH PARTITION "{old}"')
        connection.exec_driver_sql(f'DROP TABLE "{old}"')
    connection.exec_driver_sql(f'ALTER TABLE "{partition}" ATTACH PARTITION "{stage}" '
                               "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")  # fmt: skip


def _locked_quickly(session: Session, partition: str) -> bool:
    """ACCESS EXCLUSIVE on the job's partition within SWAP_LOCK_TIMEOUT; False (nothing changed) when a
    reader of the job holds it longer: waiting would stall every later reader of the job behind it."""
    savepoint = session.begin_nested()
    connection = session.connection()
    try:
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
        connection.exec_driver_sql(f'LOCK TABLE "{partition}" IN ACCESS EXCLUSIVE MODE')
    except OperationalError:
        savepoint.rollback()
        return False
    savepoint.commit()
    connection.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")
    return True


def _copy_in_place(connection: Connection, job_id: str, stage: str) -> None:
    """The fallback that never waits for readers: replace the rows inside the job's current leaf (MVCC:
    readers keep the old rows until the commit), with row-by-row index maintenance (slow at 1M rows)."""
    connection.exec_driver_sql(f"DELETE FROM {PARENT} WHERE job_id = {_literal(job_id)}")
    connection.exec_driver_sql(f'INSERT INTO {PARENT} SELECT * FROM "{stage}"')
    connection.exec_driver_sql(f'DROP TABLE "{stage}"')
