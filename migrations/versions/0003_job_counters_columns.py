"""jobs.finish_attempts and jobs.finish_heartbeat_at: the finishing step's counter and lease as columns

Before this revision the finishing step counted its starts inside the ``progress`` JSON
(``progress.finish_attempts``), next to copies of ``units_done`` / ``units_total`` (which were columns
already). A counter inside a JSON document can only be read, changed and written back, which loses
updates when two writers race; a column is incremented by one guarded UPDATE. ``finish_heartbeat_at``
is stamped by the running finishing step, so a duplicate of it is refused while it lives.

Existing rows: ``finish_attempts`` is copied from the JSON, the counters are removed from it (the
columns are the truth: where the JSON held a larger ``units_done`` than the column, the column takes
it). Downgrade puts the counters back into the JSON and drops the columns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ('finish_attempts', 'units_done', 'units_total')


def _jobs(*extra: sa.Column[Any]) -> sa.TableClause:
    return sa.table(
        'jobs', sa.column('id', sa.String()), sa.column('progress', sa.JSON()),
        sa.column('units_done', sa.Integer()), sa.column('units_total', sa.Integer()), *extra,
    )


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('finish_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('finish_heartbeat_at', sa.DateTime(timezone=True), nullable=True))

    jobs = _jobs(sa.column('finish_attempts', sa.Integer()))
    connection = op.get_bind()
    for row in connection.execute(sa.select(jobs.c.id, jobs.c.progress, jobs.c.units_done)).all():
        progress = dict(row.progress) if isinstance(row.progress, dict) else {}
        attempts = _as_int(progress.get('finish_attempts'))
        units_done = max(_as_int(row.units_done), _as_int(progress.get('units_done')))
        live = {key: value for key, value in progress.items() if key not in COUNTERS}
        connection.execute(
            jobs.update().where(jobs.c.id == row.id)
            .values(progress=live, finish_attempts=attempts, units_done=units_done)
        )


def downgrade() -> None:
    jobs = _jobs(sa.column('finish_attempts', sa.Integer()))
    connection = op.get_bind()
    query = sa.select(jobs.c.id, jobs.c.progress, jobs.c.units_done, jobs.c.units_total, jobs.c.finish_attempts)
    for row in connection.execute(query).all():
        progress = dict(row.progress) if isinstance(row.progress, dict) else {}
        progress.update(units_done=row.units_done, units_total=row.units_total)
        if row.finish_attempts:
            progress['finish_attempts'] = row.finish_attempts
        connection.execute(jobs.update().where(jobs.c.id == row.id).values(progress=progress))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('finish_heartbeat_at')
        batch_op.drop_column('finish_attempts')
