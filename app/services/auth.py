"""API keys: who is calling. Keys are kept only as sha256 hashes and compared in constant time.

With no key configured (neither MEMAUDIT_API_KEYS nor a row in api_keys) the service is
single-user: every caller is the owner ``local`` and the server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import hmac
import secrets

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.db import ApiKey
from app.services.errors import Unauthorized
from app.settings import LOCAL_OWNER, Settings, hash_api_key


def keys_configured(session: Session, settings: Settings) -> bool:
    if settings.api_key_hashes:
        return True
    return bool(session.scalar(select(exists().where(ApiKey.revoked.is_(False)))))


def _owner_from_settings(token_hash: str, settings: Settings) -> str | None:
    owner = None
    for known_hash, known_owner in settings.api_key_hashes.items():
        # No early exit: every configured key is compared, so timing says nothing about which.
        if hmac.compare_digest(known_hash, token_hash):
            owner = known_owner
    return owner


def _owner_from_db(token_hash: str, session: Session) -> str | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == token_hash, ApiKey.revoked.is_(False)))
    if row is not None and hmac.compare_digest(row.key_hash, token_hash):
        return row.owner
    return None


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Authorization", "an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization", "malformed header: expected 'Bearer <key>'")
    return token.strip()


def authenticate(authorization: str | None, session: Session, settings: Settings) -> str:
    """The owner the request acts for; raises Unauthorized when a key is needed and not valid."""
    if not keys_configured(session, settings):
        return LOCAL_OWNER
    token_hash = hash_api_key(bearer_token(authorization))
    owner = _owner_from_settings(token_hash, settings) or _owner_from_db(token_hash, session)
    if owner is None:
        raise Unauthorized("Authorization", "unknown or revoked API key")
    return owner


def create_api_key(session: Session, owner: str, name: str = "") -> str:
    """Store a new key for ``owner`` and return its plaintext (shown once, never stored)."""
    token = "ma_" + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_api_key(token), name=name))
    return token
