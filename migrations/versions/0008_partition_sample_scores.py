"""PostgreSQL: sample_scores partitioned by job, one swappable leaf per job (app/services/score_partitions.py)

A job's score set is written into a staging table by COPY, indexed by sorting, and swapped in place of the
job's old leaf in one transaction, instead of DELETE + COPY into one table whose top-k index was maintained
row by row in random order (where a 1M-row ingest spent most of its time). Existing rows move into one
partition per job. The top-k index leaves the job id out (it is one constant within a partition; queries
still name it, which prunes to the partition): its sort build is twice as fast. The foreign key to jobs is not kept on the partitioned table (adding it to every staging
table would lock jobs against updates until commit); the writer checks the job row itself.

Columns are copied with CREATE TABLE ... (LIKE ...), never listed here, so revisions that add columns to
sample_scores before or after this one need no change. SQLite: nothing changes (DELETE + INSERT there).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import hashlib
from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOP_K = "score DESC NULLS LAST, sample_id"  # within a job's partition; job_id prunes to it
FLAT_TOP_K = "job_id, score DESC NULLS LAST, sample_id"  # the unpartitioned table's, as in 0001
OLD = "sample_scores_unpartitioned"


def _partition(job_id: str) -> str:  # the rule of app.services.score_partitions.partition_name
    return f"sample_scores_{hashlib.sha256(job_id.encode()).hexdigest()[:24]}"


def _literal(job_id: str) -> str:
    return "'" + job_id.replace("'", "''") + "'"


def _is_postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if not _is_postgres():
        return
    op.execute(f"ALTER TABLE sample_scores RENAME TO {OLD}")
    op.execute(f"ALTER INDEX ix_sample_scores_job_score RENAME TO ix_{OLD}_job_score")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT sample_scores_pkey TO {OLD}_pkey")
    op.execute(f"CREATE TABLE sample_scores (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY LIST (job_id)")
    op.execute("ALTER TABLE sample_scores ADD CONSTRAINT sample_scores_pkey PRIMARY KEY (job_id, sample_id)")
    op.execute(f"CREATE INDEX ix_sample_scores_job_score ON sample_scores ({TOP_K})")
    job_ids = [row[0] for row in op.get_bind().exec_driver_sql(f"SELECT DISTINCT job_id FROM {OLD}")]
    for job_id in job_ids:
        partition, literal = _partition(job_id), _literal(job_id)
        leaf = f"{partition}_m0008"
        op.execute(f'CREATE TABLE "{leaf}" (LIKE {OLD} INCLUDING DEFAULTS)')
        op.execute(f'INSERT INTO "{leaf}" SELECT * FROM {OLD} WHERE job_id = {literal}')
        op.execute(f'ALTER TABLE "{leaf}" ADD PRIMARY KEY (job_id, sample_id)')
        op.execute(f'CREATE INDEX ON "{leaf}" ({TOP_K})')
        op.execute(f'ALTER TABLE "{leaf}" ADD CHECK (job_id = {literal})')
        op.execute(f'CREATE TABLE "{partition}" (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (sample_id)')
        op.execute(f'ALTER TABLE sample_scores ATTACH PARTITION "{partition}" FOR VALUES IN ({literal})')
        op.execute(f'ALTER TABLE "{partition}" ATTACH PARTITION "{leaf}" FOR VALUES FROM (MINVALUE) TO (MAXVALUE)')
    op.execute(f"DROP TABLE {OLD}")


def downgrade() -> None:
    if not _is_postgres():
        return
    op.execute(f"CREATE TABLE {OLD} (LIKE sample_scores INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {OLD} SELECT * FROM sample_scores")
    op.execute("DROP TABLE sample_scores CASCADE")  # its partitions with it
    op.execute(f"ALTER TABLE {OLD} RENAME TO sample_scores")
    op.execute("ALTER TABLE sample_scores ADD CONSTRAINT sample_scores_pkey PRIMARY KEY (job_id, sample_id)")
    op.execute(f"CREATE INDEX ix_sample_scores_job_score ON sample_scores ({FLAT_TOP_K})")
    op.execute("ALTER TABLE sample_scores ADD CONSTRAINT sample_scores_job_id_fkey FOREIGN KEY (job_id) "
               "REFERENCES jobs (id) ON DELETE CASCADE")
