"""Per-sample uncertainty, the adaptive stop and SPEC §5's radius counts (SPEC §5, §7)

- sample_scores.score_se / score_lo / score_hi: the bootstrap standard error and 90% interval of M
  (NULL when L = 1, in provisional sets, for GAN jobs, and for every row written before this revision).
- sample_scores.copy_count is renamed nearest_copy_count (what it always held: generated samples whose
  nearest training sample is this one, within the held-out-calibrated copy threshold), and
  sample_scores.within_tau_count is added: SPEC §5's count_tau(i), generated samples within tau of the
  sample (a radius count). Rows from before this revision get NULL there: their artifacts did not keep it.
- tau_counts (job_id, tau_index, sample_id) -> tau, within_tau_count, nearest_copy_count: the counts of
  every tau of a GAN job's sweep (rows with a non-zero count only; a missing row means zeros).
- jobs.units_skipped: units the adaptive stop (audit.stop_when_stable) made unnecessary; 0 for existing jobs.

Downgrade drops the new columns and table, renames nearest_copy_count back to copy_count, and turns
skipped units (a state the older code does not know) into failed ones that say why.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INTERVAL = ('score_se', 'score_lo', 'score_hi')


def upgrade() -> None:
    # Plain ALTER TABLE on both dialects (SQLite >= 3.25 renames columns in place): no table rebuild, so
    # the score index and its NULLS LAST clause stay as they are.
    op.execute('ALTER TABLE sample_scores RENAME COLUMN copy_count TO nearest_copy_count')
    for name in (*INTERVAL, 'within_tau_count'):
        op.add_column('sample_scores', sa.Column(name, sa.Float(), nullable=True))
    op.add_column('jobs', sa.Column('units_skipped', sa.Integer(), nullable=False, server_default='0'))
    op.create_table(
        'tau_counts',
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('tau_index', sa.Integer(), nullable=False),
        sa.Column('sample_id', sa.Integer(), nullable=False),
        sa.Column('tau', sa.Float(), nullable=False),
        sa.Column('within_tau_count', sa.Integer(), nullable=False),
        sa.Column('nearest_copy_count', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'tau_index', 'sample_id'),
    )


def downgrade() -> None:
    units = sa.table('units', sa.column('state', sa.String()), sa.column('error', sa.Text()))
    op.execute(units.update().where(units.c.state == 'skipped')
               .values(state='failed', error='skipped by the adaptive stop (audit.stop_when_stable)'))
    op.drop_table('tau_counts')
    op.drop_column('jobs', 'units_skipped')  # SQLite >= 3.35 drops columns in place
    for name in ('within_tau_count', *INTERVAL):
        op.drop_column('sample_scores', name)
    op.execute('ALTER TABLE sample_scores RENAME COLUMN nearest_copy_count TO copy_count')
