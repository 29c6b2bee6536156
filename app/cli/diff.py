"""`memaudit diff A B`: what differs between two audits' provenance, field by field, scores aside.

A and B are anything that carries a provenance block (app.provenance): a local CLI's summary.json, a
job as ``GET /jobs/{id}`` returns it (or just its ``summary``), a provenance JSON, a Parquet export
(the block is in its metadata), or ``job:ID`` for a job on the server (``--server`` / $MEMAUDIT_URL,
``--api-key`` / $MEMAUDIT_API_KEY). Timings always differ between runs, so they are left out
unless ``--timings`` is given. Exit code 0 when nothing differs, 1 when something does, 2 when a file
cannot be read or has no provenance block.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_SAME, EXIT_DIFFERENT, EXIT_INPUT_ERROR = 0, 1, 2
PARQUET_KEY = b"memaudit.provenance"
MISSING = object()
# Fields that measure a run rather than describe it.
TIMING_FIELDS = {"phases", "seconds", "train_seconds", "is_seconds"}


class NoProvenance(ValueError):
    pass


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diff", help="compare two audits' provenance (inputs, software, config, seeds, units)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("first", metavar="A", help="summary.json, job JSON, Parquet export or job:ID")
    parser.add_argument("second", metavar="B", help="the audit to compare it with")
    parser.add_argument("--timings", action="store_true", help="also compare phase and unit timings")
    parser.add_argument("--server", default=None, help="for job:ID (default $MEMAUDIT_URL)")
    parser.add_argument("--api-key", default=None, help="for job:ID (default $MEMAUDIT_API_KEY)")
    parser.set_defaults(func=diff_command)


def _served(job_id: str, server: str | None, api_key: str | None) -> dict[str, Any]:
    import httpx
    from memaudit_client import MemauditClient, MemauditError

    try:
        with MemauditClient(server, api_key) as client:
            job = client.get_job(job_id)
    except (MemauditError, httpx.TransportError) as error:
        raise NoProvenance(f"job:{job_id}: {' '.join(str(error).split())}") from None
    block = (job.get("summary") or {}).get("provenance")
    if not isinstance(block, dict):
        raise NoProvenance(f"job:{job_id}: no provenance block (state {job.get('state')})")
    return block


def load_provenance(text: str, server: str | None = None, api_key: str | None = None) -> dict[str, Any]:
    if text.startswith("job:"):
        return _served(text.removeprefix("job:"), server, api_key)
    path = Path(text)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        if PARQUET_KEY not in metadata:
            raise NoProvenance(f"{path}: the Parquet file has no {PARQUET_KEY.decode()} metadata")
        block: dict[str, Any] = json.loads(metadata[PARQUET_KEY])
        return block
    document = json.loads(path.read_text())
    for candidate in (document, document.get("summary") if isinstance(document, dict) else None):
        if isinstance(candidate, dict) and isinstance(candidate.get("provenance"), dict):
            found: dict[str, Any] = candidate["provenance"]
            return found
    if isinstance(document, dict) and "software" in document and "inputs" in document:
        return document  # a provenance block on its own
    raise NoProvenance(f"{path}: no provenance block (an audit from before memaudit recorded one?)")


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def differences(first: Any, second: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, value in A, value in B) for every leaf that differs; MISSING where absent."""
    if isinstance(first, dict) and isinstance(second, dict):
        for key in sorted(set(first) | set(second), key=str):
            yield from differences(first.get(key, MISSING), second.get(key, MISSING), f"{path}.{key}" if path
                                   else str(key))  # fmt: skip
    elif isinstance(first, list) and isinstance(second, list):
        if len(first) != len(second):
            yield f"{path} (length)", len(first), len(second)
        for index, (a, b) in enumerate(zip(first, second, strict=False)):
            yield from differences(a, b, f"{path}[{index}]")
    elif first != second:
        yield path, first, second


def _text(value: Any) -> str:
    return "(absent)" if value is MISSING else json.dumps(value, sort_keys=True)


def diff_command(args: argparse.Namespace) -> int:
    try:
        first, second = (load_provenance(text, args.server, args.api_key)
                         for text in (args.first, args.second))  # fmt: skip
    except (OSError, ValueError) as error:  # json.JSONDecodeError and NoProvenance are ValueErrors
        print(f"memaudit diff: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if not args.timings:
        first, second = _without_timings(first), _without_timings(second)
    found = list(differences(first, second))
    for path, a, b in found:
        print(f"{path}: {_text(a)} -> {_text(b)}")
    if not found:
        print("no differences" + ("" if args.timings else " (timings not compared; --timings compares them)"))
    return EXIT_DIFFERENT if found else EXIT_SAME
