"""Operations on runs and iterations: the rules of what may happen when, independent of HTTP."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.config import SpinConfig
from services.control_plane.confine import overlap
from services.control_plane.db import (
    ACTIVE_ITERATION_STATES,
    Iteration,
    IterationState,
    Run,
    RunState,
    utcnow,
)
from services.control_plane.errors import Conflict, Invalid, NotFound


def create_run(session: Session, cfg: SpinConfig) -> Run:
    for run_id, other in session.execute(select(Run.id, Run.storage_uri)).all():
        if overlap(cfg.storage_uri, other):
            raise Conflict(
                f"run {run_id} writes to {other}, which is or holds {cfg.storage_uri}: give this run its own "
                "storage_uri, neither inside nor around another run's"
            )
    run = Run(
        id=uuid.uuid4().hex[:12],
        name=cfg.name,
        storage_uri=cfg.storage_uri,
        config=cfg.model_dump(mode="json"),
        num_iterations=cfg.num_iterations,
        state=RunState.CREATED,
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id!r}")
    return run


def list_runs(session: Session, offset: int = 0, limit: int = 100) -> tuple[list[Run], int]:
    total = session.scalar(select(func.count()).select_from(Run)) or 0
    runs = session.scalars(select(Run).order_by(Run.created_at.desc()).offset(offset).limit(limit)).all()
    return list(runs), total


def get_iteration(run: Run, index: int) -> Iteration:
    for it in run.iterations:
        if it.index == index:
            return it
    raise NotFound(f"run {run.id} has no iteration {index}")


def active_iterations(run: Run) -> list[Iteration]:
    return [it for it in run.iterations if it.state in ACTIVE_ITERATION_STATES]


def launch(session: Session, run: Run, count: int) -> list[Iteration]:
    """Queue the next `count` iterations. A failed or cancelled iteration is queued again (it resumes)."""
    if active_iterations(run):
        raise Conflict(f"run {run.id} already has an iteration queued or running; wait for it or cancel the run")
    done = sum(1 for it in run.iterations if it.state == IterationState.SUCCEEDED)
    if run.state == RunState.STOPPED:
        raise Conflict(f"run {run.id} was stopped by its stopping rule: {run.stop_reason}")
    if done + count > run.num_iterations:
        raise Invalid(
            f"run {run.id} has {run.num_iterations} iteration(s) and {done} already succeeded; "
            f"at most {run.num_iterations - done} more can be launched"
        )
    queued = []
    by_index = {it.index: it for it in run.iterations}
    for k in range(done, done + count):
        it = by_index.get(k)
        if it is None:
            it = Iteration(run_id=run.id, index=k)
            run.iterations.append(it)
        it.state, it.error, it.finished_at, it.attempts, it.job_id = IterationState.PENDING, None, None, 0, None
        queued.append(it)
    run.state, run.error = RunState.RUNNING, None
    session.flush()
    return queued


def cancel(run: Run) -> list[Iteration]:
    """Mark the run's active iterations cancelled; returns those that had a job to stop."""
    if not active_iterations(run):
        raise Conflict(f"run {run.id} is {run.state.value} with no iteration queued or running: nothing to cancel")
    stopped = []
    for it in active_iterations(run):
        if it.job_id:
            stopped.append(it)
        it.state, it.finished_at = IterationState.CANCELLED, utcnow()
    run.state = RunState.CANCELLED
    return stopped


def delete_run(session: Session, run: Run) -> None:
    if active_iterations(run):
        raise Conflict(f"run {run.id} has an iteration queued or running; cancel it before deleting")
    session.delete(run)


def stop_run(run: Run, reason: str) -> None:
    """The stopping rule fired: skip the queued iterations and record why."""
    for it in active_iterations(run):
        it.state, it.finished_at = IterationState.SKIPPED, utcnow()
    run.state, run.stop_reason = RunState.STOPPED, reason


def settle_run(run: Run) -> None:
    """Derive the run's state once none of its iterations is active."""
    if run.state == RunState.STOPPED:
        return
    if active_iterations(run):
        run.state = RunState.RUNNING
        return
    states = [it.state for it in run.iterations]
    if IterationState.FAILED in states:
        run.state = RunState.FAILED
    elif IterationState.CANCELLED in states:
        run.state = RunState.CANCELLED
    elif sum(s == IterationState.SUCCEEDED for s in states) >= run.num_iterations:
        run.state = RunState.COMPLETED
    elif states:
        run.state = RunState.IDLE
