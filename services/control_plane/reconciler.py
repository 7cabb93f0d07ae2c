"""Bringing the records in line with what Ray and the run's storage say, every few seconds.

Each running run has at most one iteration in flight. Its job is submitted when it is next in line; its
state follows the Ray job; its stage and progress follow iter_<k>/status.json; its metrics come from
iter_<k>/metrics.json once the job succeeds, and then the next queued iteration is submitted. A failed job
is resubmitted (it resumes from its checkpoints) up to `job_retries` times. Because job ids are
deterministic and everything is re-read each pass, a restarted control plane simply carries on.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from jobs.config import SpinConfig
from jobs.metrics import IterationMetrics
from jobs.progress import FINAL_ERROR_MARK
from jobs.report.stopping import record_stop, stop_decision
from jobs.storage import RunStorage
from services.control_plane.db import Iteration, IterationState, Lease, Run, RunState, utcnow
from services.control_plane.errors import Unavailable
from services.control_plane.launcher import Launcher, submission_id
from services.control_plane.store import active_iterations, settle_run, stop_run

logger = logging.getLogger("spin.control_plane")

# The last line of a traceback: `ValueError: ...`, `jobs.sft_rows.BadRowsError: ...`, `re.error: ...`.
LEASE = "reconciler"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|error|Warning)\b.*:")


def config_uri(run: Run) -> str:
    storage = RunStorage(run.storage_uri)
    return storage.uri_of(storage.config())


def failure_summary(message: str | None, log_tail: str) -> str:
    """The line that says what went wrong: the job's last exception, else Ray's message."""
    exceptions = [line.strip() for line in log_tail.splitlines() if EXCEPTION_LINE.match(line.strip())]
    return exceptions[-1] if exceptions else (message or "the job failed without a message").strip()


class Reconciler:
    def __init__(self, sessions: sessionmaker[Session], launcher: Launcher, job_retries: int, lease_s: float = 10.0):
        self.sessions = sessions
        self.launcher = launcher
        self.job_retries = job_retries
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active = False  # whether this control plane holds the lease (its last pass did)
        self._submitted: list[str] = []  # jobs submitted in the current transaction

    def hold_lease(self) -> bool:
        """Take or renew the database lease on reconciling: another control plane on the same database only serves
        reads while one holds it, so two never act on one run."""
        now = utcnow()
        expires = now + timedelta(seconds=self.lease_s)
        try:
            with self.sessions.begin() as session:
                result: Any = session.execute(
                    update(Lease)
                    .where(Lease.name == LEASE, or_(Lease.holder == self.holder, Lease.expires_at < now))
                    .values(holder=self.holder, expires_at=expires)
                )
                taken = result.rowcount
                if not taken and session.get(Lease, LEASE) is None:
                    session.add(Lease(name=LEASE, holder=self.holder, expires_at=expires))
                    taken = 1
        except IntegrityError:  # another control plane inserted it first
            taken = 0
        self.active = bool(taken)
        return self.active

    def tick(self) -> None:
        if not self.hold_lease():
            return
        with self.sessions() as session:
            run_ids = session.scalars(select(Run.id).where(Run.state == RunState.RUNNING)).all()
        for run_id in run_ids:
            self._submitted = []
            try:
                with self.sessions.begin() as session:  # one short transaction per run
                    run = session.get(Run, run_id)
                    if run is not None and run.state == RunState.RUNNING:
                        self.advance(run)
            except StaleDataError:
                # The API changed this run meanwhile (a cancel, say): its write stands, this pass is dropped.
                for job_id in self._submitted:
                    self.launcher.stop(job_id)
                logger.info("run changed during reconciliation; retrying next pass", extra={"run": run_id})
            except Unavailable as e:
                logger.warning("cannot reach Ray", extra={"run": run_id, "error": e.message})

    def advance(self, run: Run) -> None:
        active = active_iterations(run)
        if active:
            it = active[0]
            if it.state == IterationState.PENDING:
                self._submit(run, it)
            else:
                self._follow(run, it)
        settle_run(run)

    def _submit(self, run: Run, it: Iteration) -> None:
        it.attempts += 1
        job_id = submission_id(run.id, it.index, it.attempts)
        adopted = self.launcher.status(job_id) is not None  # submitted before a restart: adopted, never stopped here
        it.job_id = self.launcher.submit(
            job_id, config_uri(run), it.index, {"spin_run": run.id, "spin_iteration": str(it.index)}
        )
        if not adopted:
            self._submitted.append(it.job_id)
        it.state, it.stage, it.progress = IterationState.SUBMITTED, None, None
        logger.info("iteration submitted", extra={"run": run.id, "iteration": it.index, "job": it.job_id})

    def _follow(self, run: Run, it: Iteration) -> None:
        assert it.job_id is not None
        status = self.launcher.status(it.job_id)
        self._read_progress(run, it)
        if status is None:
            # Ray has no such job (a new cluster, say): submit it again; the iteration resumes from storage.
            self._retry_or_fail(run, it, "the Ray cluster no longer knows this iteration's job")
        elif status.status == "RUNNING":
            if it.state != IterationState.RUNNING:
                it.state, it.started_at = IterationState.RUNNING, it.started_at or utcnow()
        elif status.status == "SUCCEEDED":
            storage = RunStorage(run.storage_uri)
            metrics = _read_json(storage, storage.metrics(it.index))
            if metrics is None:
                self._retry_or_fail(run, it, "the job succeeded but wrote no metrics.json")
                return
            try:
                checked = IterationMetrics.model_validate(metrics).model_dump(mode="json")
            except ValidationError as e:
                self._retry_or_fail(run, it, f"the job's metrics.json does not parse: {e}")
                return
            it.metrics, it.state, it.stage, it.finished_at = checked, IterationState.SUCCEEDED, None, utcnow()
            it.error = None  # an earlier attempt's failure is not this iteration's outcome
            logger.info("iteration succeeded", extra={"run": run.id, "iteration": it.index})
            self._apply_stopping_rule(run)
        elif status.status == "FAILED":
            tail = self.launcher.logs_tail(it.job_id, 15)
            error = f"{failure_summary(status.message, tail)}\n{tail}".strip()
            self._retry_or_fail(run, it, error, final=FINAL_ERROR_MARK in tail)
        elif status.status == "STOPPED":
            it.state, it.finished_at = IterationState.CANCELLED, utcnow()

    def _apply_stopping_rule(self, run: Run) -> None:
        cfg = SpinConfig.model_validate(run.config)
        succeeded = [it for it in run.iterations if it.state == IterationState.SUCCEEDED and it.metrics]
        decision = stop_decision(cfg.stopping, [IterationMetrics.model_validate(it.metrics) for it in succeeded])
        if decision.stop and decision.reason:
            stop_run(run, decision.reason)
            record_stop(RunStorage(run.storage_uri), max(it.index for it in succeeded), decision.reason)
            if not cfg.generator.keep_serving:  # the iteration's job left it for the next one, which will not come
                self.launcher.release(run.id, config_uri(run))
            logger.info("run stopped by its stopping rule", extra={"run": run.id, "reason": decision.reason})

    def _retry_or_fail(self, run: Run, it: Iteration, error: str, final: bool = False) -> None:
        it.error = error[-4000:]
        if it.attempts <= self.job_retries and not final:
            logger.warning("iteration job failed; resubmitting", extra={"run": run.id, "iteration": it.index})
            it.state = IterationState.PENDING
            return
        it.state, it.finished_at = IterationState.FAILED, utcnow()
        run.error = f"iteration {it.index} failed: {error.splitlines()[0] if error else 'no message'}"
        self.launcher.release(run.id, config_uri(run))  # the job may have died before releasing its generator
        for later in active_iterations(run):
            later.state, later.finished_at = IterationState.CANCELLED, utcnow()

    def _read_progress(self, run: Run, it: Iteration) -> None:
        storage = RunStorage(run.storage_uri)
        status = _read_json(storage, storage.status(it.index))
        if status:
            it.stage = status.get("stage")
            it.progress = {k: status.get(k) for k in ("completed", "total", "info", "stage_seconds", "updated_at")}


def _read_json(storage: RunStorage, path: str) -> dict[str, Any] | None:
    """A small JSON file of a run folder, or None while it is absent, being written or unreadable."""
    try:
        return dict(storage.read_json(path)) if storage.exists(path) else None
    except (OSError, ValueError):
        return None
