"""FastAPI dependencies: settings, a DB session per request, and the calling owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.services.auth import authenticate
from app.settings import Settings, get_settings


def settings_dep() -> Settings:
    return get_settings()


def session_dep() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(settings_dep)]
SessionDep = Annotated[Session, Depends(session_dep)]


def owner_dep(
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> str:
    return authenticate(authorization, session, settings)


OwnerDep = Annotated[str, Depends(owner_dep)]
