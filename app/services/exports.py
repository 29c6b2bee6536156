"""All scores of a job as CSV or Parquet, streamed: rows are read in batches through a server-side
cursor (yield_per) and written out batch by batch, so memory stays flat for millions of rows.

The generators open their own session: a streamed body outlives the request's session.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import select

from app.db import Job, SampleScore, get_sessionmaker
from app.services.job_samples import sample_text

BATCH_ROWS = 20_000  # rows per DB fetch, CSV chunk and Parquet row group
COLUMNS = ("sample_id", "key", "label", "rank", "score", "log_p_in", "log_p_out", "n_in", "n_out", "rho",
           "copy_count")  # fmt: skip
_INTEGER_COLUMNS = frozenset({"sample_id", "rank", "n_in", "n_out"})
_TEXT_COLUMNS = frozenset({"key", "label"})  # job_samples: the user's id and class, null when none
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}

Row = Sequence[Any]


def export_query(job_id: str) -> Any:
    """Every row of a job in ``COLUMNS`` order, by sample id."""
    columns = [sample_text(name) if name in _TEXT_COLUMNS else getattr(SampleScore, name) for name in COLUMNS]
    return select(*columns).where(SampleScore.job_id == job_id).order_by(SampleScore.sample_id)


def score_batches(job_id: str, batch_rows: int = BATCH_ROWS) -> Iterator[Sequence[Row]]:
    """(sample_id order) batches of rows; on PostgreSQL a server-side cursor, never the whole table."""
    query = export_query(job_id).execution_options(yield_per=batch_rows)
    with get_sessionmaker()() as session:
        result = session.execute(query)
        yield from result.partitions()


def csv_bytes(batch: Sequence[Row], schema: Any) -> bytes:
    """Rows as CSV lines (no header): Arrow's writer, shortest round-trip floats, NULL/NaN as empty."""
    import pyarrow.csv as pa_csv

    buffer = io.BytesIO()
    pa_csv.write_csv(_record_batch(batch, schema), buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue()


def csv_stream(job_id: str, batch_rows: int = BATCH_ROWS) -> Iterator[bytes]:
    schema = parquet_schema()
    yield (",".join(COLUMNS) + "\n").encode("ascii")
    for batch in score_batches(job_id, batch_rows):
        yield csv_bytes(batch, schema)


class _ChunkSink:
    """A write-only file that hands over what was written since the last ``take()``.

    pyarrow's ParquetWriter writes row groups in order and the footer last, so the file can be sent
    while it is being written; only ``tell`` (for the footer's offsets) must count every byte.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def parquet_schema(job: Job | None = None) -> Any:
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name in _INTEGER_COLUMNS:
            return pa.int64()
        return pa.string() if name in _TEXT_COLUMNS else pa.float64()

    fields = [pa.field(name, kind(name), nullable=name != "sample_id") for name in COLUMNS]
    metadata = {}
    if job is not None:  # the file says which audit it came from
        metadata = {"memaudit.job_id": job.id, "memaudit.kind": job.kind,
                    "memaudit.provisional": str(bool(job.scores_provisional)).lower()}
        block = (job.summary or {}).get("provenance")
        if block is not None:  # app.provenance; `memaudit diff` reads it from here
            metadata["memaudit.provenance"] = json.dumps(block, sort_keys=True)
    return pa.schema(fields, metadata=metadata)


def _record_batch(batch: Sequence[Row], schema: Any) -> Any:
    import pyarrow as pa

    columns = list(zip(*batch, strict=True))
    # from_pandas: NaN becomes null, so a non-finite value is never exported as a number.
    arrays = [pa.array(values, type=field.type, from_pandas=True)
              for field, values in zip(schema, columns, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def parquet_stream(job: Job, batch_rows: int = BATCH_ROWS) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(job)
    sink = _ChunkSink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd")
    try:
        for batch in score_batches(job.id, batch_rows):
            writer.write_batch(_record_batch(batch, schema), row_group_size=len(batch))
            chunk = sink.take()
            if chunk:
                yield chunk
    finally:
        writer.close()
    yield sink.take()
