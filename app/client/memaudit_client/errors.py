"""The exceptions the client raises."""

from __future__ import annotations

from typing import Any

import httpx


class MemauditError(Exception):
    """The server answered with an error status; ``message`` is what the server said."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.body = body


class WaitTimeout(TimeoutError):
    """``MemauditClient.wait`` gave up before the job reached a final state."""

    def __init__(self, job_id: str, seconds: float, last_state: str) -> None:
        super().__init__(f"job {job_id} still {last_state} after {seconds:.0f}s")
        self.job_id = job_id
        self.last_state = last_state


def _describe_validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    message = str(item.get("msg") or item.get("message") or item)
    return f"{location}: {message}" if location else message


def server_message(response: httpx.Response) -> str:
    """One line from whatever error body the server sent (FastAPI detail, our error object, text)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text.splitlines()[0][:500] if text else response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail", body.get("error", body))
        if isinstance(detail, list):
            return "; ".join(_describe_validation_item(item) for item in detail)
        if isinstance(detail, dict):
            field, message = detail.get("field"), detail.get("message") or detail.get("detail")
            if message is not None:
                return f"{field}: {message}" if field else str(message)
        return str(detail)
    return str(body)


def raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()  # a streamed response has no body yet; a read one returns it again
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise MemauditError(response.status_code, server_message(response), body)
