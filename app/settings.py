"""Service settings: every knob is an environment variable with the ``MEMAUDIT_`` prefix.

Built on demand by :func:`get_settings` (never at import time) so tests and the CLI can
change the environment before anything reads it. docs/configuration.md lists every variable.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_OWNER = "local"
# Owners are stored in String(128) columns and appear in logs: a conservative alphabet.
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
# A token is everything after the first ':'; printable ASCII without spaces (it travels in a header).
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,512}")


def hash_api_key(token: str) -> str:
    """The only form in which an API key is kept (DB and memory)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_api_keys(value: str) -> dict[str, str]:
    """``owner:token,owner2:token2`` -> {sha256(token): owner}; ValueError naming the bad entry.

    Entries are separated by commas; surrounding spaces are ignored; an empty value means no keys.
    The error never repeats a token (it may be a real secret that was only mistyped around).
    """
    hashes: dict[str, str] = {}
    entries = [part.strip() for part in value.split(",")]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            if len(entries) > 1:
                raise ValueError(f"entry {number} is empty (stray comma?)")
            continue
        owner, sep, token = entry.partition(":")
        where = f"entry {number}"
        if not sep:
            raise ValueError(f"{where} has no ':'; every entry must look like owner:token")
        if not OWNER_PATTERN.fullmatch(owner):
            raise ValueError(f"{where}: the owner must be 1-128 of A-Z a-z 0-9 . _ @ + - (starting "
                             "with a letter or digit)")
        if not TOKEN_PATTERN.fullmatch(token):
            raise ValueError(f"{where} (owner {owner!r}): the token must be 1-512 printable ASCII "
                             "characters without spaces or commas")
        digest = hash_api_key(token)
        if digest in hashes and hashes[digest] != owner:
            raise ValueError(f"{where} (owner {owner!r}) repeats the token of owner {hashes[digest]!r}")
        hashes[digest] = owner
    return hashes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMAUDIT_", extra="ignore")

    data_dir: Path = Field(default=Path("./memaudit-data"), description="SQLite files, uploads, artifacts")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    broker_url: str | None = Field(default=None, description="Celery broker; default SQLite in data_dir")
    data_root: Path | None = Field(default=None, description="Server-side datasets reachable by `path`")
    artifacts_dir: Path | None = Field(default=None, description="Unit artifacts; default data_dir/artifacts")
    host: str = "127.0.0.1"
    port: int = 8000
    # "owner:token,owner2:token2": parsed and hashed once, when the settings are built; a malformed
    # value stops the process at start-up (app factory, serve, worker) instead of failing requests.
    api_keys: str = Field(default="", description="Comma-separated owner:token pairs")
    max_upload_bytes: int = 200 * 1024 * 1024
    max_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    # Archives and folders of images (docs/science.md, "Datasets"): checked before anything is inflated.
    max_archive_members: int = Field(default=2_000_000, ge=1, description="Members of one archive")
    max_compression_ratio: float = Field(default=200.0, gt=1, description="Inflated / compressed bytes")
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
    webhook_allow_private: bool = Field(
        default=False, description="Webhooks may target loopback/private/link-local addresses (internal use)")
    # What one request may cost (docs/configuration.md, "Limits"): per-field bounds, shown in the
    # OpenAPI schema, and an estimate of the whole job's floating-point work.
    max_model_params: int = Field(default=20_000_000, ge=1, description="Parameters of one model")
    max_is_samples: int = Field(default=4096, ge=1, description="Importance samples S per evaluation")
    max_epochs: int = Field(default=10_000, ge=1, description="Training epochs of one VAE")
    max_batch_size: int = Field(default=8192, ge=2, description="Minibatch size (VAE and GAN)")
    max_folds_x_repeats: int = Field(default=1000, ge=2, description="Models K x L of one audit")
    max_gan_steps: int = Field(default=200_000, ge=1, description="Generator steps of one MR-GAN unit")
    max_generated_samples: int = Field(default=200_000, ge=2, description="Samples generated per unit")
    max_job_work: float = Field(default=1e18, gt=0, description="Estimated FLOPs of one job")
    max_active_jobs: int = Field(default=10, ge=0, description="Active jobs per owner; 0 = no limit")
    # Test-only: a directory of fault-point files (app/faults.py). Never set it in production.
    fault_dir: Path | None = Field(default=None, description="TEST ONLY: fault-injection directory")

    _api_key_hashes: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("api_keys")
    @classmethod
    def _valid_api_keys(cls, value: str) -> str:
        parse_api_keys(value)  # raises ValueError naming the entry; pydantic names the variable
        return value

    def model_post_init(self, _context: object) -> None:
        self._api_key_hashes = parse_api_keys(self.api_keys)

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
    def stores_dir(self) -> Path:
        """Canonical stores (uint8 images + keys/labels) of converted datasets, by content identity."""
        return self.data_dir / "stores"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir if self.artifacts_dir is not None else self.data_dir / "artifacts"

    @property
    def api_key_hashes(self) -> dict[str, str]:
        """sha256(token) -> owner for keys configured by environment (parsed once, at construction)."""
        return self._api_key_hashes

    def ensure_dirs(self) -> None:
        for directory in (self.data_dir, self.uploads_dir, self.resolved_artifacts_dir):
            directory.mkdir(parents=True, exist_ok=True)


class ConfigurationError(ValueError):
    """A setting that cannot be used; the message names the variable and never repeats its value."""


def load_settings() -> Settings:
    """Settings from the environment, or ConfigurationError (values are left out: they may be secrets)."""
    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for item in error.errors(include_input=False, include_url=False):
            name = "MEMAUDIT_" + "_".join(str(part) for part in item["loc"]).upper()
            problems.append(f"{name}: {str(item['msg']).removeprefix('Value error, ')}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return load_settings()
