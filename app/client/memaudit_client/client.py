"""A typed HTTP client for the memaudit REST API (httpx only)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from memaudit_client.errors import MemauditError, WaitTimeout, raise_for_status
from memaudit_client.states import TERMINAL_STATES

JsonObject = dict[str, Any]
EXPORT_FORMATS = ("csv", "parquet")
# Worth retrying while waiting: the API restarting behind a proxy, or a brief overload.
_TRANSIENT_STATUS = frozenset({502, 503, 504})


class MemauditClient:
    """One connection pool to one memaudit server; use as a context manager or call ``close()``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("MEMAUDIT_URL") or "http://127.0.0.1:8000"
        api_key = api_key if api_key is not None else os.environ.get("MEMAUDIT_API_KEY")
        headers = {"Accept": "application/json", "User-Agent": "memaudit-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> MemauditClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ----

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        raise_for_status(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def health(self) -> JsonObject:
        result: JsonObject = self._json("GET", "/health")
        return result

    # ---- datasets ----

    def upload_dataset(
        self, source: str | os.PathLike[str] | BinaryIO, filename: str | None = None
    ) -> JsonObject:
        """Upload a .npz/.npy file; the same bytes uploaded again give the same dataset id."""
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            with path.open("rb") as handle:
                return self.upload_dataset(handle, filename or path.name)
        name = filename or Path(str(getattr(source, "name", "dataset.npz"))).name
        result: JsonObject = self._json(
            "POST", "/datasets", files={"file": (name, source, "application/octet-stream")}
        )
        return result

    def get_dataset(self, dataset_id: str) -> JsonObject:
        result: JsonObject = self._json("GET", f"/datasets/{dataset_id}")
        return result

    # ---- jobs ----

    def create_job(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> JsonObject:
        """POST /jobs with the same JSON body the API documents; returns the queued job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: JsonObject = self._json("POST", "/jobs", json=dict(spec), headers=headers)
        return result

    def get_job(self, job_id: str) -> JsonObject:
        result: JsonObject = self._json("GET", f"/jobs/{job_id}")
        return result

    def list_jobs(self, *, limit: int = 50, offset: int = 0, state: str | None = None) -> list[JsonObject]:
        """One page of the caller's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return _items(self._json("GET", "/jobs", params=params))

    def iter_jobs(self, *, page_size: int = 100, state: str | None = None) -> Iterator[JsonObject]:
        offset = 0
        while True:
            page = self.list_jobs(limit=page_size, offset=offset, state=state)
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    def cancel_job(self, job_id: str) -> JsonObject:
        result: JsonObject = self._json("POST", f"/jobs/{job_id}/cancel")
        return result

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 24 * 3600.0,
        poll_interval: float = 1.0,
        max_interval: float = 15.0,
        on_update: Callable[[JsonObject], None] | None = None,
    ) -> JsonObject:
        """Poll until the job is succeeded, failed or cancelled; the interval grows 1.5x up to max.

        Returns the final job (check its ``state``); raises ``WaitTimeout`` after ``timeout`` seconds.
        Transient failures (connection errors, 502/503/504) are retried until the deadline.
        """
        deadline = time.monotonic() + timeout
        interval = poll_interval
        last_state = "unknown"
        while True:
            job = self._poll_once(job_id)
            if job is not None:
                last_state = str(job.get("state"))
                if on_update is not None:
                    on_update(job)
                if last_state in TERMINAL_STATES:
                    return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(job_id, timeout, last_state)
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, max_interval)

    def _poll_once(self, job_id: str) -> JsonObject | None:
        try:
            return self.get_job(job_id)
        except httpx.TransportError:
            return None
        except MemauditError as error:
            if error.status_code in _TRANSIENT_STATUS:
                return None
            raise

    # ---- scores ----

    def top_scores(self, top: int = 100, *, job_id: str | None = None) -> list[JsonObject]:
        """Most-memorized samples of ``job_id`` (default: the caller's latest finished job)."""
        params: dict[str, Any] = {"top": top}
        if job_id:
            params["job_id"] = job_id
        body = self._json("GET", "/scores", params=params)
        return _items(body)

    def scores_page(
        self, job_id: str, *, limit: int = 1000, cursor: str | None = None, sort: str = "score_desc"
    ) -> JsonObject:
        """One keyset page: ``{"items": [...], "next_cursor": ..., "provisional": ...}``.

        ``sort`` is ``score_desc`` (most memorized first), ``score_asc`` or ``sample_id``.
        """
        params: dict[str, Any] = {"limit": limit, "sort": sort}
        if cursor:
            params["cursor"] = cursor
        result: JsonObject = self._json("GET", f"/jobs/{job_id}/scores", params=params)
        return result

    def sample(self, job_id: str, sample_id: int) -> JsonObject:
        """One sample's scores, with its ``key`` and ``label``."""
        result: JsonObject = self._json("GET", f"/jobs/{job_id}/samples/{int(sample_id)}")
        return result

    def sample_by_key(self, job_id: str, key: str) -> JsonObject:
        """The sample whose key (your own id: a file path, a parquet ``id``, a WebDataset ``__key__``) is
        ``key``; MemauditError with status 404 when the job has none."""
        result: JsonObject = self._json("GET", f"/jobs/{job_id}/samples", params={"key": key})
        return result

    def iter_scores(
        self, job_id: str, *, page_size: int = 1000, sort: str = "score_desc"
    ) -> Iterator[JsonObject]:
        """Every score of a job, following the keyset cursor page by page."""
        cursor: str | None = None
        while True:
            page = self.scores_page(job_id, limit=page_size, cursor=cursor, sort=sort)
            yield from _items(page)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def confident_scores(self, job_id: str, *, page_size: int = 1000) -> list[JsonObject]:
        """The job's confidently memorized samples (SPEC §7: ``score_lo``, the lower end of the bootstrap
        90% interval, above the 0.95 quantile of M), most memorized first. Every score row carries
        ``score_se``, ``score_lo``, ``score_hi`` (null when the audit has one repetition) and ``confident``;
        the job summary has ``confidently_memorized``, ``stability`` and ``repeats_used``."""
        return [row for row in self.iter_scores(job_id, page_size=page_size) if row.get("confident")]

    # ---- files ----

    def export_scores(self, job_id: str, out: str | os.PathLike[str], *, fmt: str = "csv") -> Path:
        """Stream all scores of a job to ``out`` as CSV or Parquet (never held in memory)."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"fmt must be one of {EXPORT_FORMATS}, not {fmt!r}")
        return self._download(f"/jobs/{job_id}/scores.{fmt}", Path(out))

    def download_report(self, job_id: str, out: str | os.PathLike[str]) -> Path:
        """Save the job's self-contained HTML report."""
        return self._download(f"/jobs/{job_id}/report", Path(out))

    def _download(self, path: str, out: Path) -> Path:
        # A name unique to this process and call: two downloads to one path never share a partial file.
        partial = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.part")
        try:
            with self._http.stream("GET", path, headers={"Accept": "*/*"}) as response:
                raise_for_status(response)
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(chunk_size=1 << 20):
                        handle.write(chunk)
            partial.replace(out)  # a failed download never leaves a truncated file under the real name
        finally:
            partial.unlink(missing_ok=True)
        return out


def _items(body: Any) -> list[JsonObject]:
    if isinstance(body, list):
        return body
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise MemauditError(200, "unexpected response: no 'items' list", body)
    return items
