"""Starting Celery workers: one worker process per GPU (CUDA is initialised only in the child
that uses it), a single CPU worker when there is no GPU. Each listens on the `gpu` queue with
concurrency 1 and prefetch 1."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

log = logging.getLogger(__name__)


def _visible_gpus() -> int:
    """Counted in a throwaway interpreter: touching CUDA here, before Celery forks its pool child,
    could leave the child unable to initialise CUDA."""
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


def run_workers(device: str) -> int:
    gpus = _visible_gpus() if device == "auto" else 0
    if gpus <= 1:
        return run_one_worker(device)
    children = []
    for index in range(gpus):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(index), "MEMAUDIT_WORKER_DEVICE": "cuda"}
        children.append(subprocess.Popen([sys.executable, "-m", "workers"], env=env))
    log.info("started %d GPU workers", gpus)

    def _forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    return max(child.wait() for child in children)


def run_one_worker(device: str) -> int:
    from celery.signals import worker_process_init, worker_ready

    from app.settings import get_settings
    from app.tasks import QUEUE, get_celery
    from workers.reconcile import reconcile, start_periodic

    def _on_ready(**_kwargs: object) -> None:
        try:
            reconcile()
        except Exception:  # a failed reconcile must not stop the worker; the periodic one retries
            log.exception("reconcile at start-up failed")
        start_periodic(get_settings().reconcile_interval_s)

    def _on_child_start(**_kwargs: object) -> None:
        from app.db import get_engine

        # A pool child forked after the parent used the DB must not share the parent's sockets.
        get_engine().dispose(close=False)

    worker_ready.connect(_on_ready, weak=False)
    worker_process_init.connect(_on_child_start, weak=False)
    name = f"memaudit-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    argv = ["worker", "-Q", QUEUE, "-c", "1", "--pool", "prefork", "-n", name, "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    get_celery().worker_main(argv=argv)
    return 0
