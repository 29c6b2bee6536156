"""GET /health: is the database reachable, is the broker reachable."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import __version__
from app.api.deps import SessionDep
from app.api.schemas import Health
from app.tasks import get_celery

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def _broker_reachable() -> bool:
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:  # any failure to connect means "not reachable"; the reason goes to the log
        log.warning("broker unreachable", exc_info=True)
        return False


@router.get("/health", operation_id="get_health", response_model=Health,
            responses={503: {"model": Health, "description": "database or broker unreachable"}})
def get_health(session: SessionDep) -> Health | JSONResponse:
    try:
        session.execute(text("SELECT 1"))
        database = True
    except Exception:
        log.warning("database unreachable", exc_info=True)
        database = False
    broker = _broker_reachable()
    health = Health(status="ok" if database and broker else "degraded", database=database, broker=broker,
                    version=__version__)
    if health.status == "ok":
        return health
    return JSONResponse(health.model_dump(), status_code=503)
