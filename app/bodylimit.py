"""Request body limits (413), enforced before the body is parsed or spooled to disk.

A declared Content-Length over the limit is refused at once; a body without one (chunked) is
counted as it streams in and refused as soon as it passes the limit, so neither a huge JSON body nor
a huge multipart upload is ever buffered whole. Multipart bodies (uploads) get the upload limit plus
room for the multipart framing; every other body gets the JSON limit.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_OVERHEAD = 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, json_limit: int, upload_limit: int) -> None:
        self.app, self.json_limit, self.upload_limit = app, json_limit, upload_limit

    def _limit(self, headers: Headers) -> tuple[int, str]:
        if headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return self.upload_limit + MULTIPART_OVERHEAD, f"uploads are limited to {self.upload_limit} bytes"
        return self.json_limit, f"request bodies are limited to {self.json_limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, message = self._limit(headers)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, message)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    # Raised inside the route's body reading: FastAPI re-raises HTTPExceptions there,
                    # and the app's handler turns it into the usual error body.
                    raise HTTPException(413, message)
            return event

        await self.app(scope, counting_receive, send)


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"detail": [{"loc": ["body"], "msg": message, "type": "too_large"}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
