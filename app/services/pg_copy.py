"""Binary COPY of per-sample scores into PostgreSQL, built with numpy (no Python loop per row).

The PostgreSQL binary COPY format is a header, then per tuple an int16 field count and for every
field an int32 byte length (-1 = NULL) followed by the value in network byte order. Rows are
grouped by which float columns are NULL (non-finite), so each group is one packed numpy record
array; COPY does not care about row order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
FLOAT_COLUMNS = ("score", "log_p_in", "log_p_out", "score_se", "score_lo", "score_hi")
INT_COLUMNS = ("n_in", "n_out", "rank")
CHUNK_ROWS = 100_000


def _record_dtype(job_bytes: int, nulls: tuple[bool, ...]) -> np.dtype[Any]:
    fields: list[tuple[str, str]] = [("fields", ">i2"), ("job_len", ">i4"), ("job", f"S{job_bytes}"),
                                     ("sid_len", ">i4"), ("sample_id", ">i4")]
    for name, is_null in zip(FLOAT_COLUMNS, nulls, strict=True):
        fields.append((f"{name}_len", ">i4"))
        if not is_null:
            fields.append((name, ">f8"))
    for name in INT_COLUMNS:
        fields += [(f"{name}_len", ">i4"), (name, ">i4")]
    return np.dtype(fields)


def _records(job: bytes, columns: dict[str, np.ndarray], rows: np.ndarray, nulls: tuple[bool, ...]) -> bytes:
    out = np.empty(len(rows), dtype=_record_dtype(len(job), nulls))  # (rows,) packed tuples
    out["fields"] = 1 + 1 + len(FLOAT_COLUMNS) + len(INT_COLUMNS)
    out["job_len"], out["job"] = len(job), job
    out["sid_len"], out["sample_id"] = 4, rows
    for name, is_null in zip(FLOAT_COLUMNS, nulls, strict=True):
        out[f"{name}_len"] = -1 if is_null else 8
        if not is_null:
            out[name] = columns[name][rows]
    for name in INT_COLUMNS:
        out[f"{name}_len"], out[name] = 4, columns[name][rows]
    return out.tobytes()


def binary_copy_chunks(job_id: str, columns: dict[str, np.ndarray]) -> Iterator[bytes]:
    """The COPY stream for ``columns`` (every array (N,), sample id = position)."""
    job = job_id.encode("utf-8")
    finite = np.stack([np.isfinite(columns[name]) for name in FLOAT_COLUMNS], axis=1)  # (N, F)
    pattern = (~finite).astype(np.int64) @ (1 << np.arange(len(FLOAT_COLUMNS)))  # (N,) which floats are NULL
    yield HEADER
    for code in np.unique(pattern).tolist():
        nulls = tuple(bool(code >> bit & 1) for bit in range(len(FLOAT_COLUMNS)))
        rows = np.flatnonzero(pattern == code)
        for start in range(0, len(rows), CHUNK_ROWS):
            yield _records(job, columns, rows[start:start + CHUNK_ROWS], nulls)
    yield TRAILER
