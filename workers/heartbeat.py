"""A running unit's heartbeat: a daemon thread stamps ``units.heartbeat_at`` every interval while
the unit trains, independent of how long an epoch takes. The reconciler (workers.reconcile) treats a
running unit whose heartbeat is older than ``stale_after_s`` as orphaned (its worker died, or the
broker lost its message) and enqueues it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from app.db import Unit, session_scope, utcnow

log = logging.getLogger(__name__)


def beat_once(unit_id: int) -> None:
    with session_scope() as session:
        session.execute(
            update(Unit).where(Unit.id == unit_id, Unit.state == "running").values(heartbeat_at=utcnow())
        )


def _beat_until(stop: threading.Event, unit_id: int, interval_s: float) -> None:
    while not stop.wait(interval_s):
        try:
            beat_once(unit_id)
        except SQLAlchemyError:  # a dropped connection: the next beat reconnects (pool_pre_ping)
            log.warning("heartbeat of unit %s failed; retrying in %.1fs", unit_id, interval_s, exc_info=True)


@contextmanager
def heartbeat(unit_id: int, interval_s: float) -> Iterator[None]:
    """Beat for ``unit_id`` while the body runs."""
    stop = threading.Event()
    thread = threading.Thread(target=_beat_until, args=(stop, unit_id, interval_s),
                              name=f"heartbeat-unit-{unit_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=max(interval_s, 5.0))
