"""A launcher that records what the control plane submits and stops, for the in-process API tests: the cluster
is not what those tests are about, the control plane's rules are."""

from __future__ import annotations

from services.control_plane.launcher import JobStatus


class RecordingLauncher:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, int]] = []  # (job id, config URI, iteration)
        self.stopped: list[str] = []
        self.released: list[str] = []  # run ids whose generator was released
        self.jobs: dict[str, JobStatus] = {}
        self.logs: dict[str, str] = {}

    def submit(self, job_id: str, config_uri: str, index: int, metadata: dict[str, str]) -> str:
        if job_id not in self.jobs:
            self.submitted.append((job_id, config_uri, index))
            self.jobs[job_id] = JobStatus("PENDING", None)
        return job_id

    def finish(self, job_id: str, status: str, message: str | None = None, logs: str = "") -> None:
        """What the cluster would report for `job_id` from now on."""
        self.jobs[job_id], self.logs[job_id] = JobStatus(status, message), logs

    def status(self, job_id: str) -> JobStatus | None:
        return self.jobs.get(job_id)

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)
        self.jobs[job_id] = JobStatus("STOPPED", None)

    def logs_tail(self, job_id: str, lines: int = 30) -> str:
        return "\n".join(self.logs.get(job_id, "").splitlines()[-lines:])

    def reachable(self) -> bool:
        return True

    def release(self, run_id: str, config_uri: str) -> None:
        self.released.append(run_id)
