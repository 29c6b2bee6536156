"""job_samples (the user's key and label of every sample of a job) and datasets.format / datasets.details

job_samples is written once per job, when its units are planned, and joined by every score query, so
score writes never carry keys. datasets.format names what was uploaded (NULL: an .npy / .npz from before
this revision) and datasets.details holds the canonical store's name, class names and the conversion.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'job_samples',
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('sample_id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=1024), nullable=True),
        sa.Column('label', sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'sample_id'),
    )
    op.create_index('ix_job_samples_job_key', 'job_samples', ['job_id', 'key'], unique=True)
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('format', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('details', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('details')
        batch_op.drop_column('format')
    op.drop_index('ix_job_samples_job_key', table_name='job_samples')
    op.drop_table('job_samples')
