"""The `memaudit` command line.

Each sub-module owns a group of sub-commands and exposes ``register(subparsers)``; the
command's handler is stored as ``func`` and returns a process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import audit, diff, gan, keys, remote, server
from app.settings import ConfigurationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memaudit",
        description="Audit generative models for training-data memorization.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (audit, gan, server, keys, remote, diff):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except ConfigurationError as error:  # e.g. a malformed MEMAUDIT_API_KEYS: stop before serving anything
        print(f"memaudit: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
