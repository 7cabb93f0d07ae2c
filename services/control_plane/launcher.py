"""Iterations go to the Ray cluster as Ray Jobs, through the dashboard's Jobs API (the same locally and on
KubeRay). The only module that talks to Ray."""

from __future__ import annotations

import logging
import shlex
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from services.control_plane.errors import Unavailable

logger = logging.getLogger("spin.control_plane")


@dataclass(frozen=True)
class JobStatus:
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str | None


class Launcher(Protocol):
    """What the control plane needs of a cluster: submit, follow and stop an iteration's job."""

    def submit(self, job_id: str, config_uri: str, index: int, metadata: dict[str, str]) -> str: ...
    def status(self, job_id: str) -> JobStatus | None: ...
    def stop(self, job_id: str) -> None: ...
    def logs_tail(self, job_id: str, lines: int = 30) -> str: ...
    def reachable(self) -> bool: ...
    def release(self, run_id: str, config_uri: str) -> None: ...


def submission_id(run_id: str, index: int, attempt: int) -> str:
    """Deterministic, so a control plane that died between submitting and recording can find its job again."""
    return f"spin-{run_id}-iter{index}-try{attempt}"


class RayJobLauncher:
    def __init__(self, dashboard_url: str, python: str, entrypoint_num_cpus: float = 0.0):
        self.dashboard_url = dashboard_url
        self.python = python
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self._client: Any = None

    @property
    def client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        if self._client is None:
            try:
                self._client = JobSubmissionClient(self.dashboard_url)
            except Exception as e:  # connection refused, wrong version, auth: all mean "cannot launch now"
                raise Unavailable(f"the Ray cluster at {self.dashboard_url} cannot be reached: {e}") from e
        return self._client

    def entrypoint(self, config_uri: str, index: int) -> str:
        return f"{shlex.quote(self.python)} -m jobs run {shlex.quote(config_uri)} --iteration {index}"

    def submit(self, job_id: str, config_uri: str, index: int, metadata: dict[str, str]) -> str:
        """Submit iteration `index`, or adopt the job already submitted under `job_id`."""
        if self.status(job_id) is not None:
            return job_id
        return str(
            self.client.submit_job(
                entrypoint=self.entrypoint(config_uri, index),
                submission_id=job_id,
                metadata=metadata,
                entrypoint_num_cpus=self.entrypoint_num_cpus,
            )
        )

    def status(self, job_id: str) -> JobStatus | None:
        """The job's state, or None when Ray does not know it."""
        try:
            info = self.client.get_job_info(job_id)
        except RuntimeError as e:
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise Unavailable(f"the Ray cluster at {self.dashboard_url} did not answer: {e}") from e
        return JobStatus(str(info.status.value if hasattr(info.status, "value") else info.status), info.message)

    def stop(self, job_id: str) -> None:
        try:
            self.client.stop_job(job_id)
        except RuntimeError:
            pass  # already finished

    def release(self, run_id: str, config_uri: str) -> None:
        """Submit the job that deletes the run's generator: a failed, cancelled or deleted run keeps none. Best
        effort: a cluster that cannot be reached holds no generator to release."""
        try:
            self.client.submit_job(
                entrypoint=f"{shlex.quote(self.python)} -m jobs release {shlex.quote(config_uri)}",
                submission_id=f"spin-{run_id}-release-{uuid.uuid4().hex[:8]}",
                metadata={"spin_run": run_id, "spin_release": "1"},
                entrypoint_num_cpus=self.entrypoint_num_cpus,
            )
        except (Unavailable, RuntimeError, OSError) as e:
            logger.warning("could not release the run's generator", extra={"run": run_id, "error": str(e)})

    def logs_tail(self, job_id: str, lines: int = 30) -> str:
        try:
            return "\n".join(str(self.client.get_job_logs(job_id)).splitlines()[-lines:])
        except RuntimeError:
            return ""

    def reachable(self) -> bool:
        try:
            self.client.list_jobs()
            return True
        except Exception:
            self._client = None
            return False
