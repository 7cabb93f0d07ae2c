"""Persistent state: runs and their iterations, in SQLite or PostgreSQL through SQLAlchemy."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunState(enum.StrEnum):
    CREATED = "created"  # no iteration launched yet
    RUNNING = "running"  # an iteration is queued or running
    IDLE = "idle"  # iterations done so far succeeded; more may be launched
    COMPLETED = "completed"  # every configured iteration succeeded
    STOPPED = "stopped"  # the stopping rule ended the run early (see stop_reason)
    FAILED = "failed"
    CANCELLED = "cancelled"


class IterationState(enum.StrEnum):
    PENDING = "pending"  # launched, waiting for its turn
    SUBMITTED = "submitted"  # a Ray Job exists, not yet running
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # queued, then not run because the stopping rule ended the run


ACTIVE_ITERATION_STATES = (IterationState.PENDING, IterationState.SUBMITTED, IterationState.RUNNING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC on every backend (SQLite keeps no time zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    storage_uri: Mapped[str] = mapped_column(String(1024), unique=True)
    config: Mapped[dict[str, Any]]
    num_iterations: Mapped[int] = mapped_column(Integer)
    state: Mapped[RunState] = mapped_column(Enum(RunState, native_enum=False, length=16), default=RunState.CREATED)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    iterations: Mapped[list[Iteration]] = relationship(
        back_populates="run", order_by="Iteration.index", cascade="all, delete-orphan", lazy="selectin"
    )
    # Optimistic locking: the API and the reconciler write the same rows; a write based on a stale read
    # fails (StaleDataError) instead of silently undoing the other's change.
    row_version: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": row_version}


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[IterationState] = mapped_column(
        Enum(IterationState, native_enum=False, length=16), default=IterationState.PENDING
    )
    job_id: Mapped[str | None] = mapped_column(String(128), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    run: Mapped[Run] = relationship(back_populates="iterations")
    row_version: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": row_version}


class Lease(Base):
    """Which control plane may act on the runs (reconcile them) until when: one at a time, the others serve reads."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")  # so deleting a run deletes its iterations
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the reconciler's writes
            cursor.close()

    Base.metadata.create_all(engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
