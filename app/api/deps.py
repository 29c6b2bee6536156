"""FastAPI dependencies: settings, a DB session per request, and the calling owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.services.auth import authenticate
from app.settings import Settings, get_settings


async def settings_dep() -> Settings:
    # async: it does no I/O, and a sync dependency costs a threadpool round trip per request
    return get_settings()


def session_dep() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(settings_dep)]
SessionDep = Annotated[Session, Depends(session_dep)]


def owner_dep(request: Request, session: SessionDep, settings: SettingsDep) -> str:
    # The header is read here rather than declared as a parameter: /openapi.json states it once, as
    # the bearer security scheme (app.api.openapi), not as a header of every operation.
    return authenticate(request.headers.get("authorization"), session, settings)


OwnerDep = Annotated[str, Depends(owner_dep)]
