"""Heartbeats: while a unit trains (or a finishing step runs), a daemon thread calls its guarded beat
every interval, independent of how long an epoch takes. The reconciler (workers.reconcile) treats a
running unit whose heartbeat is older than ``stale_after_s`` as orphaned (its worker died, or the broker
lost its message) and re-sends it; a finishing step with a stale heartbeat may be claimed again.

A beat that does not apply means the claim is gone (another run owns the work now, or the job ended):
the yielded event is set, and the run stops at its next check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


def _beat_until(
    stop: threading.Event, lost: threading.Event, beat: Callable[[], bool], interval_s: float, name: str
) -> None:
    while not stop.wait(interval_s):
        try:
            if not beat():
                lost.set()
                return
        except SQLAlchemyError:  # a dropped connection: the next beat reconnects (pool_pre_ping)
            log.warning("%s failed; retrying in %.1fs", name, interval_s, exc_info=True)


@contextmanager
def heartbeat(beat: Callable[[], bool], interval_s: float, name: str) -> Iterator[threading.Event]:
    """Call ``beat`` every ``interval_s`` while the body runs; yields the "claim lost" event."""
    stop, lost = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=_beat_until, args=(stop, lost, beat, interval_s, name), name=name, daemon=True
    )
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=max(interval_s, 5.0))
