"""`python -m workers [--device DEVICE]`: run the Celery worker(s) (what `memaudit worker` executes)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from app.settings import ConfigurationError, get_settings
from workers.launch import run_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (MEMAUDIT_WORKER_DEVICE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device:
        os.environ["MEMAUDIT_WORKER_DEVICE"] = args.device
        get_settings.cache_clear()
    try:
        device = get_settings().worker_device
    except ConfigurationError as error:  # e.g. a malformed MEMAUDIT_API_KEYS: stop before serving anything
        print(f"memaudit worker: {error}", file=sys.stderr)
        return 2
    return run_workers(device)


if __name__ == "__main__":
    sys.exit(main())
