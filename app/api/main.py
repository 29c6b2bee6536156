"""The FastAPI application, built by create_app() (uvicorn: ``app.api.main:create_app --factory``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app import __version__
from app.api.errors import AUTH_RESPONSES, install_error_handlers
from app.api.openapi import install_openapi
from app.api.routes import datasets, exports, health, jobs, scores
from app.bodylimit import BodyLimitMiddleware
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _keys_configured(settings: Settings) -> bool:
    from app.db import session_scope
    from app.services.auth import keys_configured

    try:
        with session_scope() as session:
            return keys_configured(session, settings)
    except Exception as error:  # the schema must still be served; assume the safe answer
        log.warning("could not read api_keys for /openapi.json: %s", error)
        return True


def create_app() -> FastAPI:
    """The app; a malformed setting (e.g. MEMAUDIT_API_KEYS) raises ConfigurationError here, at start."""
    settings = get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="memaudit",
        version=__version__,
        description="Audit generative models for training-data memorization (cross-validated scores).",
    )
    install_error_handlers(app)
    app.include_router(health.router)
    for module in (datasets, jobs, scores, exports):  # every route here needs a key when keys exist
        app.include_router(module.router, responses=AUTH_RESPONSES)
    # Bodies over the limits are refused (413) before they are parsed or spooled, chunked ones too.
    app.add_middleware(BodyLimitMiddleware, json_limit=settings.max_json_bytes,
                       upload_limit=settings.max_upload_bytes)
    install_openapi(app, settings, lambda: _keys_configured(settings))

    return app
