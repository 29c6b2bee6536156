"""datasets.is_8bit: whether an upload's pixels are exact multiples of 1/255

Recorded when an upload is validated, so that POST /jobs can check a likelihood against an
uploaded dataset from its row instead of reading the file. Rows from before this revision are
backfilled from their dtype: uint8 uploads are 8-bit by construction (true); float uploads stay
NULL ("not recorded") because knowing needs the pixels. A NULL is resolved from the file the first
time a job needs it, and written back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_8bit', sa.Boolean(), nullable=True))

    datasets = sa.table('datasets', sa.column('dtype', sa.String()), sa.column('is_8bit', sa.Boolean()))
    op.execute(datasets.update().where(datasets.c.dtype == 'uint8').values(is_8bit=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('is_8bit')
