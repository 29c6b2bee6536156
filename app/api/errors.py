"""One error shape for every 4xx/5xx: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}.

Validation errors keep FastAPI's shape (the location names the field); service errors use the same
shape with their field; anything unexpected is a 500 with no stack trace in the body.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.ratelimit import RateLimited
from app.services.errors import ServiceError, Unauthorized

log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body."""

    detail: list[ErrorItem]


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, malformed, unknown or revoked API key"},
}


def error_body(field: str, message: str, kind: str) -> dict[str, object]:
    return {"detail": [{"loc": field.split("."), "msg": message, "type": kind}]}


async def _service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after_s)}
    kind = type(error).__name__.lower()
    return JSONResponse(error_body(error.field, error.message, kind), error.status_code, headers=headers)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [
        {"loc": list(item.get("loc", ())), "msg": str(item.get("msg", "")), "type": str(item.get("type", ""))}
        for item in error.errors()
    ]
    return JSONResponse({"detail": details}, 422)


def allowed_methods(request: Request) -> str | None:
    """Every method the API serves at this path, from its OpenAPI paths (Starlette's own 405 names only
    the first route's methods when several routes share a path); None for paths outside the schema."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            methods = {method.upper() for method in operations}
            return ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
    return None


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    headers = dict(getattr(error, "headers", None) or {})
    if error.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse(error_body("request", str(error.detail), "http"), error.status_code,
                        headers=headers or None)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("server", "internal error (logged on the server)", "internal"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
