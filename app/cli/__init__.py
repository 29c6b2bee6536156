"""The `memaudit` command line.

Each sub-module owns a group of sub-commands and exposes ``register(subparsers)``; the
command's handler is stored as ``func`` and returns a process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import audit, gan, remote, server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memaudit",
        description="Audit generative models for training-data memorization.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (audit, gan, server, remote):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
