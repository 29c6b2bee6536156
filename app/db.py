"""Database: typed ORM tables and engine/session factories (built by functions, never at import).

Tables are created only by Alembic (migrations/). The same schema runs on PostgreSQL (production,
service tests) and SQLite (embedded default), except where ``only_on`` says otherwise (sample_scores:
partitioned on PostgreSQL since revision 0008); tests/service/test_schema_matches_orm.py holds the
migrations and these tables to each other on both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.lifecycle import JobState, UnitState
from app.settings import get_settings

_Conditional = TypeVar("_Conditional", Index, ForeignKeyConstraint)


def only_on(dialect: str, item: _Conditional) -> _Conditional:
    """An index or constraint the migrations create on ``dialect`` only: ``ddl_if`` for DDL emitted from
    this metadata, ``info["only_on"]`` for tests/service/test_schema_matches_orm.py, which compares the
    migrated schema of each dialect with what applies to it here."""
    item.info["only_on"] = dialect
    return item.ddl_if(dialect=dialect)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class _StateColumn(TypeDecorator[Any]):
    """A state enum stored as its plain string (what the database always held), read back as the enum."""

    impl = String(16)
    cache_ok = True

    def __init__(self, states: type[JobState] | type[UnitState]) -> None:
        super().__init__()
        self.states = states

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(self.states(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> JobState | UnitState | None:
        return None if value is None else self.states(value)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    name: Mapped[str] = mapped_column(String(128), default="")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # None: never expires (revision 0004). A revoked row may also stand for a MEMAUDIT_API_KEYS token.
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner", "sha256", name="uq_datasets_owner_sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(256))
    storage_path: Mapped[str] = mapped_column(Text)  # relative to the uploads dir
    shape: Mapped[list[Any]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(32))
    min_value: Mapped[float] = mapped_column(Float)
    max_value: Mapped[float] = mapped_column(Float)
    # Pixels are exact multiples of 1/255; None only for float uploads recorded before revision 0002.
    is_8bit: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # What was uploaded (revision 0006): "npy", "npz", "image-zip", "parquet", ...; NULL for .npy/.npz
    # uploads from before. details: the canonical store's folder, class names, the conversion applied.
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32), default="vae_audit")
    state: Mapped[JobState] = mapped_column(_StateColumn(JobState), default=JobState.QUEUED, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated request, normalised
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    image_shape: Mapped[list[Any]] = mapped_column(JSON)
    device: Mapped[str | None] = mapped_column(String(32), nullable=True)
    units_total: Mapped[int] = mapped_column(Integer, default=0)
    units_done: Mapped[int] = mapped_column(Integer, default=0)
    # Units the adaptive stop (audit.stop_when_stable) moved to skipped (revision 0007); the job is
    # complete when units_done + units_skipped = units_total.
    units_skipped: Mapped[int] = mapped_column(Integer, default=0)
    # Starts of the finishing step (bounded like a unit's attempts; also its claim token) and the
    # heartbeat of the one running now (revision 0003; before, the count lived in ``progress``).
    finish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    finish_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The running unit's live position (unit, epoch, epochs, fraction); counters are columns.
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    scores_provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    scores_units: Mapped[int] = mapped_column(Integer, default=0)  # units behind the stored scores
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def progress_document(self) -> dict[str, Any]:
        """What the API and webhooks show as ``progress``: the counters plus the live position."""
        return {**(self.progress or {}), "units_done": self.units_done, "units_total": self.units_total,
                "units_skipped": self.units_skipped}


class Unit(Base):
    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_units_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    model_ids: Mapped[list[Any]] = mapped_column(JSON)
    state: Mapped[UnitState] = mapped_column(_StateColumn(UnitState), default=UnitState.PENDING)
    # Starts of this unit; the value a run claimed it with is that run's token (see workers.runner).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    artifact_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SampleScore(Base):
    """One row per (job, training sample). Generic: VAE audits fill score/log_p_in/log_p_out and, in the
    final set with L >= 2, the bootstrap interval score_se/score_lo/score_hi (SPEC §7, revision 0007);
    GAN jobs fill within_tau_count (SPEC §5's radius count) / nearest_copy_count (nearest-credit count,
    called copy_count before revision 0007) / rho instead. Non-finite values are stored as NULL."""

    __tablename__ = "sample_scores"
    # The foreign key to jobs exists on SQLite only: revision 0008 partitions the table by job on
    # PostgreSQL without it (the score writer checks the job row; jobs are never deleted). On SQLite it
    # still deletes a job's scores with the job, like job_samples and tau_counts on both.
    __table_args__ = (
        only_on("sqlite", ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE")),
    )
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    log_p_in: Mapped[float | None] = mapped_column(Float, nullable=True)
    log_p_out: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_in: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_out: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rho: Mapped[float | None] = mapped_column(Float, nullable=True)
    nearest_copy_count: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    score_se: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_lo: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_hi: Mapped[float | None] = mapped_column(Float, nullable=True)
    within_tau_count: Mapped[float | None] = mapped_column(Float, nullable=True)


class TauCount(Base):
    """SPEC §5's per-training-sample counts for every tau of a GAN job (revision 0007): one row per
    (job, tau index, sample) where either count at that tau is not zero (a missing row is zeros).
    ``tau_index`` is the unit's index (explicit taus first, then tau quantiles; copy_test: its radii in
    order), ``tau`` its resolved value. sample_scores holds the counts of the job's reference tau."""

    __tablename__ = "tau_counts"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tau_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tau: Mapped[float] = mapped_column(Float)
    within_tau_count: Mapped[int] = mapped_column(Integer)
    nearest_copy_count: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobSample(Base):
    """The user's id (``key``) and class (``label``, as text) of every training sample of a job, written
    once when the job's units are planned (revision 0006) and joined by the score queries."""

    __tablename__ = "job_samples"
    __table_args__ = (Index("ix_job_samples_job_key", "job_id", "key", unique=True),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)


# Top-k by score for one job is a range scan of this index, no sort. NULL (= non-finite score)
# sorts last: SQLite puts NULL lowest already (and rejects NULLS LAST in an index), and queries use
# score_order() to match. On PostgreSQL (revision 0008) the table is partitioned by job, so the index
# leaves the job id out: each job's partition holds one leaf (app/services/score_partitions.py).
only_on("sqlite", Index("ix_sample_scores_job_score", SampleScore.job_id, SampleScore.score.desc(),
                        SampleScore.sample_id))  # fmt: skip
only_on("postgresql", Index("ix_sample_scores_job_score", SampleScore.score.desc().nulls_last(),
                            SampleScore.sample_id))  # fmt: skip


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=4)
def _engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    return _engine_for(get_settings().resolved_database_url)


def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


_AFTER_COMMIT = "memaudit.after_commit"
_AFTER_ROLLBACK = "memaudit.after_rollback"
_HOOKED = "memaudit.commit_hooks"


def on_commit(session: Session, committed: Callable[[], None],
              rolled_back: Callable[[], None] | None = None) -> None:
    """Run ``committed`` once the session's current transaction commits, or ``rolled_back`` (if given)
    when it rolls back instead; either way the pair is then forgotten. Callbacks run outside any
    transaction (they must not use the session) and in the order registered.
    """
    if not session.info.get(_HOOKED):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)
        session.info[_HOOKED] = True
    session.info.setdefault(_AFTER_COMMIT, []).append(committed)
    session.info.setdefault(_AFTER_ROLLBACK, []).append(rolled_back)


def _after_commit(session: Session) -> None:
    session.info.pop(_AFTER_ROLLBACK, None)
    for callback in session.info.pop(_AFTER_COMMIT, []):
        callback()


def _after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    for callback in session.info.pop(_AFTER_ROLLBACK, []):
        if callback is not None:
            callback()
