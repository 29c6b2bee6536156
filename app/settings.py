"""Service settings: every knob is an environment variable with the ``MEMAUDIT_`` prefix.

Built on demand by :func:`get_settings` (never at import time) so tests and the CLI can
change the environment before anything reads it. docs/configuration.md lists every variable.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_OWNER = "local"


def hash_api_key(token: str) -> str:
    """The only form in which an API key is kept (DB and memory)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMAUDIT_", extra="ignore")

    data_dir: Path = Field(default=Path("./memaudit-data"), description="SQLite files, uploads, artifacts")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    broker_url: str | None = Field(default=None, description="Celery broker; default SQLite in data_dir")
    data_root: Path | None = Field(default=None, description="Server-side datasets reachable by `path`")
    artifacts_dir: Path | None = Field(default=None, description="Unit artifacts; default data_dir/artifacts")
    host: str = "127.0.0.1"
    port: int = 8000
    # "owner:token,owner2:token2"; hashed on load, the plaintext is not kept.
    api_keys: str = Field(default="", description="Comma-separated owner:token pairs")
    max_upload_bytes: int = 200 * 1024 * 1024
    max_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    task_time_limit_s: int = 6 * 3600
    visibility_timeout_s: int = 7 * 3600
    worker_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    embedded_worker: bool = Field(default=True, description="`memaudit serve` also runs a worker")
    max_top: int = 10_000
    webhook_secret: str = Field(default="", description="HMAC-SHA256 key for webhook signatures")
    webhook_max_attempts: int = Field(default=6, description="Deliveries per event before giving up")
    page_size_max: int = 1000
    # Reliability (docs/reliability.md): heartbeats of running units, the reconciler that re-enqueues
    # work the broker lost, bounded redelivery, and the per-owner rate limit on job creation.
    heartbeat_interval_s: float = Field(default=15.0, gt=0, description="Running units beat this often")
    stale_after_s: float = Field(default=120.0, gt=0, description="A unit silent this long is re-enqueued")
    reconcile_interval_s: float = Field(default=30.0, gt=0, description="Workers reconcile this often")
    max_unit_attempts: int = Field(default=3, ge=1, description="Starts of one unit before the job fails")
    job_rate_limit: int = Field(default=30, ge=0, description="Jobs one owner may create per window; 0 = off")
    job_rate_window_s: int = Field(default=60, ge=1, description="Window of the job-creation rate limit")
    # Test-only: a directory of fault-point files (app/faults.py). Never set it in production.
    fault_dir: Path | None = Field(default=None, description="TEST ONLY: fault-injection directory")

    @field_validator("visibility_timeout_s")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'memaudit.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir if self.artifacts_dir is not None else self.data_dir / "artifacts"

    @property
    def api_key_hashes(self) -> dict[str, str]:
        """sha256(token) -> owner for keys configured by environment."""
        hashes: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in self.api_keys.split(","))):
            owner, sep, token = entry.partition(":")
            if not sep or not owner or not token:
                raise ValueError("MEMAUDIT_API_KEYS entries must look like owner:token")
            hashes[hash_api_key(token)] = owner
        return hashes

    def ensure_dirs(self) -> None:
        for directory in (self.data_dir, self.uploads_dir, self.resolved_artifacts_dir):
            directory.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
