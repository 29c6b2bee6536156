"""`memaudit serve | worker | migrate | demo`: running the service itself (keys: app.cli.keys)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from app.settings import get_settings

log = logging.getLogger("memaudit")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this module's sub-commands."""
    serve = subparsers.add_parser("serve", help="run the API (and, by default, an embedded worker)")
    serve.add_argument("--host", default=None, help="bind address (default MEMAUDIT_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default MEMAUDIT_PORT)")
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.set_defaults(func=_serve)
    worker = subparsers.add_parser("worker", help="run Celery worker(s): one process per GPU, CPU if none")
    worker.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (MEMAUDIT_WORKER_DEVICE)")
    worker.set_defaults(func=_worker)
    migrate = subparsers.add_parser("migrate", help="apply the Alembic migrations to MEMAUDIT_DATABASE_URL")
    migrate.set_defaults(func=_migrate)
    demo = subparsers.add_parser("demo", help="start the embedded service and audit the bundled digits")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs per fold model")
    demo.add_argument("--top", type=int, default=10, help="how many samples to print")
    demo.set_defaults(func=_demo)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _migrate(_args: argparse.Namespace) -> int:
    from app.migrate import upgrade_to_head

    _logging()
    upgrade_to_head(get_settings().resolved_database_url)
    print("database is at the latest revision")
    return 0


def _bind_host(requested: str) -> str:
    from app.db import session_scope
    from app.services.auth import keys_configured

    with session_scope() as session:
        protected = keys_configured(session, get_settings())
    if protected:
        return requested
    if requested not in ("127.0.0.1", "localhost"):
        log.warning("no API key configured: binding to 127.0.0.1, not %s (set MEMAUDIT_API_KEYS)", requested)
    else:
        log.warning("no API key configured: single-user mode, listening on 127.0.0.1 only")
    return "127.0.0.1"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.migrate import upgrade_to_head

    _logging()
    settings = get_settings()
    settings.ensure_dirs()
    if settings.resolved_database_url.startswith("sqlite"):
        upgrade_to_head(settings.resolved_database_url)  # embedded default: nothing else would migrate
    host, port = _bind_host(args.host or settings.host), args.port or settings.port
    worker = None
    if settings.embedded_worker and not args.no_worker:
        worker = subprocess.Popen(worker_command(None))
        log.info("embedded worker started (pid %d)", worker.pid)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exit through `finally` (and stop the
    # embedded worker) instead of dying by the default handler and orphaning the worker.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        uvicorn.run("app.api.main:create_app", factory=True, host=host, port=port, log_level="info")
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    return 0


def worker_command(device: str | None) -> list[str]:
    """The worker runs as its own program (`python -m workers`): app starts it, never imports it."""
    return [sys.executable, "-m", "workers", *(["--device", device] if device else [])]


def _worker(args: argparse.Namespace) -> int:
    get_settings()  # a malformed configuration stops here, with the CLI's message, before the exec
    command = worker_command(args.device)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # the same process becomes the worker: signals reach it directly


def _demo(args: argparse.Namespace) -> int:
    from app.cli.demo import run_demo

    return run_demo(epochs=args.epochs, top=args.top)
