"""The FastAPI application, built by create_app() (uvicorn: ``app.api.main:create_app --factory``)."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app import __version__
from app.api.errors import error_body, install_error_handlers
from app.api.routes import datasets, exports, health, jobs, scores
from app.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="memaudit",
        version=__version__,
        description="Audit generative models for training-data memorization (cross-validated scores).",
    )
    install_error_handlers(app)
    for module in (health, datasets, jobs, scores, exports):
        app.include_router(module.router)
    max_json = settings.max_json_bytes

    @app.middleware("http")
    async def limit_json_body(request: Request, call_next: object) -> Response:
        # Uploads have their own limit (streamed); a JSON body is refused before it is parsed.
        length = request.headers.get("content-length")
        is_json = request.headers.get("content-type", "").startswith("application/json")
        if is_json and length is not None and length.isdigit() and int(length) > max_json:
            message = f"JSON bodies are limited to {max_json} bytes"
            return JSONResponse(error_body("body", message, "too_large"), 413)
        response: Response = await call_next(request)  # type: ignore[operator]
        return response

    return app
