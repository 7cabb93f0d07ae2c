"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.config import SpinConfig
from jobs.metrics import IterationMetrics
from services.control_plane.db import IterationState, RunState


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    config: SpinConfig


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is not 1 iteration

    iterations: int = Field(1, ge=1, le=1000, description="How many of the next iterations to launch, in order.")


class IterationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    index: int
    state: IterationState
    stage: str | None
    progress: dict[str, Any] | None
    metrics: IterationMetrics | None
    job_id: str | None
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    state: RunState
    storage_uri: str
    num_iterations: int
    error: str | None
    stop_reason: str | None
    created_at: datetime
    updated_at: datetime
    config: dict[str, Any]
    iterations: list[IterationPublic]


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class Health(BaseModel):
    status: str
    database: str
    ray: str
    # "active": this control plane reconciles the runs; "standby": another one holds the lease, this one serves reads.
    reconciler: str
