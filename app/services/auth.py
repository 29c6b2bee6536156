"""API keys: who is calling. Keys are kept only as sha256 hashes and compared in constant time.

Keys come from MEMAUDIT_API_KEYS (parsed once, when the settings are built) and from the api_keys
table (`memaudit create-key`). A key can expire (api_keys.expires_at) and can be revoked
(`memaudit revoke-key`), also a MEMAUDIT_API_KEYS one: revoking it writes a revoked row for its hash.
Every request reads the key's row, so a revocation holds from the next request on; nothing caches it.

With no key anywhere (MEMAUDIT_API_KEYS empty and api_keys empty) the service is single-user: every
caller is the owner ``local`` and the server binds to 127.0.0.1 only. A revoked or expired row still
counts as "a key exists": revoking the last key never turns a networked server into an open one.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.db import ApiKey, utcnow
from app.services.errors import NotFound, Unauthorized
from app.settings import LOCAL_OWNER, OWNER_PATTERN, Settings, hash_api_key

ENV_KEY_NAME = "MEMAUDIT_API_KEYS"  # api_keys.name of a row that revokes an environment key


def keys_configured(session: Session, settings: Settings) -> bool:
    if settings.api_key_hashes:
        return True
    return bool(session.scalar(select(exists().where(ApiKey.id.is_not(None)))))


def _owner_from_settings(token_hash: str, settings: Settings) -> str | None:
    owner = None
    for known_hash, known_owner in settings.api_key_hashes.items():
        # No early exit: every configured key is compared, so timing says nothing about which.
        if hmac.compare_digest(known_hash, token_hash):
            owner = known_owner
    return owner


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes even for timezone-aware columns; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _row_for(token_hash: str, session: Session) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == token_hash))
    if row is not None and hmac.compare_digest(row.key_hash, token_hash):
        return row
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
    row = _row_for(token_hash, session)
    if row is not None and row.revoked:
        raise Unauthorized("Authorization", "this API key was revoked")
    if row is not None and row.expires_at is not None and _aware(row.expires_at) <= utcnow():
        raise Unauthorized("Authorization", "this API key has expired")
    owner = _owner_from_settings(token_hash, settings) or (row.owner if row is not None else None)
    if owner is None:
        raise Unauthorized("Authorization", "unknown API key")
    return owner


def create_api_key(session: Session, owner: str, name: str = "",
                   expires_at: dt.datetime | None = None) -> str:  # fmt: skip
    """Store a new key for ``owner`` and return its plaintext (shown once, never stored)."""
    if not OWNER_PATTERN.fullmatch(owner):
        raise ValueError("owner: 1-128 of A-Z a-z 0-9 . _ @ + - (starting with a letter or digit)")
    if expires_at is not None and _aware(expires_at) <= utcnow():
        raise ValueError("expires_at: must lie in the future")
    token = "ma_" + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_api_key(token), name=name[:128], expires_at=expires_at))
    return token


def _revoke(row: ApiKey, now: dt.datetime) -> None:
    if not row.revoked:
        row.revoked, row.revoked_at = True, now


def revoke_by_token(session: Session, settings: Settings, token: str) -> ApiKey:
    """Revoke the key with this plaintext: its row, or a new revoked row for a MEMAUDIT_API_KEYS key."""
    token_hash, now = hash_api_key(token), utcnow()
    row = _row_for(token_hash, session)
    if row is None:
        owner = _owner_from_settings(token_hash, settings)
        if owner is None:
            raise NotFound("key", "no such API key (neither in the database nor in MEMAUDIT_API_KEYS)")
        row = ApiKey(owner=owner, key_hash=token_hash, name=ENV_KEY_NAME, created_at=now)
        session.add(row)
    _revoke(row, now)
    return row


def revoke_by_id(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("id", f"no API key with id {key_id}")
    _revoke(row, utcnow())
    return row


def revoke_owner(session: Session, settings: Settings, owner: str) -> int:
    """Revoke every key of ``owner`` (rows and MEMAUDIT_API_KEYS entries); returns how many."""
    now, count = utcnow(), 0
    rows = {row.key_hash: row for row in session.scalars(select(ApiKey).where(ApiKey.owner == owner))}
    for key_hash, env_owner in settings.api_key_hashes.items():
        if env_owner == owner and key_hash not in rows:
            rows[key_hash] = ApiKey(owner=owner, key_hash=key_hash, name=ENV_KEY_NAME, created_at=now)
            session.add(rows[key_hash])
    for row in rows.values():
        count += not row.revoked
        _revoke(row, now)
    return count


@dataclass(frozen=True)
class KeyInfo:
    source: str  # "db" or "env"
    id: int | None
    owner: str
    name: str
    hash_prefix: str
    created_at: dt.datetime | None
    expires_at: dt.datetime | None
    state: str  # active | expired | revoked


def list_keys(session: Session, settings: Settings) -> list[KeyInfo]:
    """Every key known to the server, newest rows first, then the environment's (never a plaintext)."""
    now, infos = utcnow(), []
    rows = list(session.scalars(select(ApiKey).order_by(ApiKey.id.desc())))
    for row in rows:
        expired = row.expires_at is not None and _aware(row.expires_at) <= now
        state = "revoked" if row.revoked else "expired" if expired else "active"
        source = "env" if row.key_hash in settings.api_key_hashes else "db"
        infos.append(KeyInfo(source, row.id, row.owner, row.name, row.key_hash[:12], row.created_at,
                             row.expires_at, state))  # fmt: skip
    known = {row.key_hash for row in rows}
    for key_hash, owner in settings.api_key_hashes.items():
        if key_hash not in known:
            infos.append(KeyInfo("env", None, owner, ENV_KEY_NAME, key_hash[:12], None, None, "active"))
    return infos
