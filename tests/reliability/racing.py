"""Tools for the race tests: hold one thread at an exact SQL statement (or just before its commit) while
the test runs a competing step to completion, and read back what was sent to the broker.

The hold is a SQLAlchemy engine event in the test process, so it works on any version of the service
code: it pauses the named thread *before* the statement runs (holding no lock that statement would
take) or before the transaction's COMMIT (holding every lock the transaction took).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, event, inspect, text

HOLD_TIMEOUT_S = 120.0


class Hold:
    """Set ``reached`` and wait for ``release`` the first time ``thread_name`` gets to the point."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self.reached, self.release = threading.Event(), threading.Event()
        self._armed = True

    def wait_here(self) -> None:
        if not self._armed or threading.current_thread().name != self.thread_name:
            return
        self._armed = False
        self.reached.set()
        if not self.release.wait(HOLD_TIMEOUT_S):
            raise TimeoutError(f"{self.thread_name} was held for {HOLD_TIMEOUT_S}s and never released")


@contextmanager
def hold_before_statement(
    engine: Engine, thread_name: str, starts_with: str, containing: str = ""
) -> Iterator[Hold]:
    """Hold ``thread_name`` just before it executes its first statement starting with ``starts_with``
    (and containing ``containing``, when given)."""
    hold = Hold(thread_name)

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith(starts_with) and containing in statement:
            hold.wait_here()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield hold
    finally:
        hold.release.set()
        event.remove(engine, "before_cursor_execute", before)


@contextmanager
def hold_before_commit(engine: Engine, thread_name: str) -> Iterator[Hold]:
    """Hold ``thread_name`` just before its first COMMIT (its row locks stay held meanwhile)."""
    hold = Hold(thread_name)

    def before_commit(_conn: Any) -> None:
        hold.wait_here()

    event.listen(engine, "commit", before_commit)
    try:
        yield hold
    finally:
        hold.release.set()
        event.remove(engine, "commit", before_commit)


@contextmanager
def barrier_before_statement(
    engine: Engine, thread_prefix: str, starts_with: str, parties: int
) -> Iterator[None]:
    """Each thread named ``thread_prefix*`` waits at its first such statement until ``parties`` are there."""
    barrier = threading.Barrier(parties, timeout=HOLD_TIMEOUT_S)
    passed: set[int] = set()

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        thread = threading.current_thread()
        mine = thread.name.startswith(thread_prefix) and thread.ident not in passed
        if mine and statement.lstrip().startswith(starts_with):
            passed.add(thread.ident or 0)
            barrier.wait()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


def in_thread(name: str, work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``work`` in a thread called ``name``; the list receives its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # reported to the test, which asserts on it
            outcome.append(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def _decode(raw: bytes | str) -> tuple[str, tuple[Any, ...]]:
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return str(message["headers"]["task"]), tuple(args)


def sent_tasks(broker_url: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Every task message waiting in the broker's `gpu` queue (Redis or kombu's SQLite transport)."""
    if broker_url.startswith("redis://"):
        client = redis.Redis.from_url(broker_url)
        try:
            return [_decode(raw) for raw in client.lrange("gpu", 0, -1)]
        finally:
            client.close()
    engine = create_engine(broker_url.removeprefix("sqla+"))
    try:
        if not inspect(engine).has_table("kombu_message"):  # created by kombu on its first send
            return []
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT payload FROM kombu_message WHERE visible")).scalars().all()
    finally:
        engine.dispose()
    return [_decode(raw) for raw in rows]


def purge(broker_url: str) -> None:
    if broker_url.startswith("redis://"):
        client = redis.Redis.from_url(broker_url)
        try:
            client.delete("gpu")
        finally:
            client.close()
        return
    engine = create_engine(broker_url.removeprefix("sqla+"))
    try:
        if inspect(engine).has_table("kombu_message"):
            with engine.begin() as connection:
                connection.execute(text("DELETE FROM kombu_message"))
    finally:
        engine.dispose()
