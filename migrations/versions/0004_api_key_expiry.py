"""api_keys.expires_at and api_keys.revoked_at: keys that expire, and when a key was revoked

A key whose expires_at has passed, or whose revoked flag is set, gets 401 at once (every request reads
the row; nothing caches it). Existing keys get NULL: they never expire. revoked_at is backfilled with
created_at for keys revoked before this revision (the real moment was not recorded).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))

    api_keys = sa.table('api_keys', sa.column('revoked', sa.Boolean()),
                        sa.column('created_at', sa.DateTime(timezone=True)),
                        sa.column('revoked_at', sa.DateTime(timezone=True)))
    op.execute(api_keys.update().where(api_keys.c.revoked.is_(True)).values(revoked_at=api_keys.c.created_at))


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('expires_at')
