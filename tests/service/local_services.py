"""Private PostgreSQL and Redis instances for the service tests and the benchmarks.

Each runs on a free port in a temp dir and is stopped by its context manager. PostgreSQL refuses
to run as root, so when we are root the server runs as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """The binaries are missing or the server would not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable("running as root without runuser: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--", *command]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServiceUnavailable(f"nothing listening on port {port} after {timeout_s}s")


@contextmanager
def private_postgres() -> Iterator[str]:
    """Yield a SQLAlchemy URL (psycopg 3) of a fresh, empty PostgreSQL database."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServiceUnavailable("initdb/pg_ctl not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="memaudit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, user="postgres")
    datadir, port = workdir / "data", free_port()
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(datadir), "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    log = str(workdir / "log")
    started = subprocess.run(
        _as_postgres_user([pg_ctl, "-D", str(datadir), "-o", options, "-l", log, "-w", "start"]),
        capture_output=True,
    )
    if started.returncode != 0:
        raise ServiceUnavailable(f"pg_ctl start failed: {started.stderr.decode()[-500:]}")
    try:
        _wait_for_port(port, 30)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def private_redis() -> Iterator[str]:
    """Yield a redis:// URL of a fresh Redis that keeps nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server not on PATH")
    workdir, port = Path(tempfile.mkdtemp(prefix="memaudit-redis-")), free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 15)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
