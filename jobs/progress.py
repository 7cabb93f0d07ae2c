"""Progress of an iteration's stages, shown on a console and written where the control plane reads it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from jobs.storage import RunStorage

logger = logging.getLogger("spin")
# What a job prints before an error that retrying cannot mend (bad data, a bad config, another run's folder).
FINAL_ERROR_MARK = "[spin] final error"
SHOWN = ("loss", "margin", "rewards/accuracies", "tokens_per_s")  # progress info worth a place on a progress bar


def shown_info(info: dict[str, Any]) -> str:
    """The part of a stage's progress info that a progress bar shows, as text."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if k in SHOWN)


class Sink(Protocol):
    def start(self, stage: str, total: int | None) -> None: ...
    def update(self, stage: str, completed: int, total: int | None, info: dict[str, Any]) -> None: ...
    def end(self, stage: str, seconds: float | None, error: str | None) -> None: ...


class Stage:
    def __init__(self, progress: Progress, name: str, total: int | None):
        self.progress, self.name, self.total = progress, name, total
        self.completed = 0
        self.done_before = False
        self.started, self.started_at = time.perf_counter(), time.time()

    def part(self, name: str, seconds: float) -> None:
        """Add `seconds` spent on `name` to `<stage>/<name>` in the iteration's `stage_parts`: a part done more than
        once (a second pass, a restarted worker group) counts every time."""
        key = f"{self.name}/{name}"
        self.progress.parts[key] = round(self.progress.parts.get(key, 0.0) + seconds, 3)

    def reached(self, name: str, at: float | None = None) -> None:
        """Record as `<stage>/<name>_at` the seconds from the stage's start to a milestone, at wall-clock time `at`
        (taken where it happened; default now). A milestone is a point in the stage, not a part to add up."""
        self.progress.parts[f"{self.name}/{name}_at"] = round((time.time() if at is None else at) - self.started_at, 3)

    def already_done(self) -> None:
        """The stage's output exists from an earlier attempt: nothing is redone, its time is not re-measured."""
        self.done_before = True

    def update(self, completed: int, total: int | None = None, **info: Any) -> None:
        self.completed = completed
        self.total = total if total is not None else self.total
        for sink in self.progress.sinks:
            sink.update(self.name, completed, self.total, info)


class Progress:
    """Fans stage events out to sinks and keeps each stage's wall time."""

    def __init__(self, *sinks: Sink):
        self.sinks = list(sinks)
        self.seconds: dict[str, float] = {}
        self.parts: dict[str, float] = {}  # where a stage's time went (Stage.part)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        for sink in self.sinks:
            sink.start(name, total)
        error = None
        stage = Stage(self, name, total)
        start = stage.started
        try:
            yield stage
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            seconds = None if stage.done_before else round(time.perf_counter() - start, 3)
            if seconds is not None:
                self.seconds[name] = seconds
            for sink in self.sinks:
                sink.end(name, seconds, error)


class LogSink:
    """Structured, throttled log lines: what a Ray Job's log shows."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last = 0.0

    def start(self, stage: str, total: int | None) -> None:
        logger.info("stage started", extra={"stage": stage, "total": total})

    def update(self, stage: str, completed: int, total: int | None, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s or completed == total:
            self._last = now
            logger.info("progress", extra={"stage": stage, "completed": completed, "total": total, **info})

    def end(self, stage: str, seconds: float | None, error: str | None) -> None:
        logger.info(
            "stage ended", extra={"stage": stage, "seconds": seconds, "done_before": seconds is None, "error": error}
        )


class StatusSink:
    """iter_<k>/status.json in the run's storage: the current stage and how far it is, for the control plane."""

    def __init__(self, storage: RunStorage, iteration: int, every_s: float = 2.0):
        self.storage, self.path, self.every_s = storage, storage.status(iteration), every_s
        self.status: dict[str, Any] = {"iteration": iteration, "stage": None, "stage_seconds": {}}
        if storage.exists(self.path):  # an earlier attempt: keep the times of the stages it finished
            self.status["stage_seconds"] = dict(storage.read_json(self.path).get("stage_seconds", {}))
        self._last = 0.0

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.status["updated_at"] = datetime.now(UTC).isoformat()
            self.storage.write_json(self.path, self.status)

    def start(self, stage: str, total: int | None) -> None:
        self.status.update(stage=stage, completed=0, total=total, info={}, error=None)
        self._write(force=True)

    def update(self, stage: str, completed: int, total: int | None, info: dict[str, Any]) -> None:
        new_total = total != self.status.get("total")
        self.status.update(completed=completed, total=total, info=info)
        self._write(force=new_total or completed == total)

    def end(self, stage: str, seconds: float | None, error: str | None) -> None:
        if seconds is not None:
            self.status["stage_seconds"][stage] = seconds
        self.status["error"] = error
        self._write(force=True)


class RichSink:
    """A live progress bar per stage on the terminal."""

    def __init__(self, console: Any = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console or Console(stderr=True),
        )
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int | None) -> None:
        if not self.tasks:
            self.bars.start()
        self.tasks[stage] = self.bars.add_task(stage, total=total, info="")

    def update(self, stage: str, completed: int, total: int | None, info: dict[str, Any]) -> None:
        self.bars.update(self.tasks[stage], completed=completed, total=total, info=shown_info(info))

    def end(self, stage: str, seconds: float | None, error: str | None) -> None:
        task = self.tasks[stage]
        if seconds is None and error is None:
            self.bars.update(task, total=1, completed=1, info="done in an earlier attempt")
        elif error is None:
            total = self.bars.tasks[task].total
            self.bars.update(task, completed=total if total is not None else self.bars.tasks[task].completed)
        else:
            self.bars.update(task, info=f"[red]failed: {error[:80]}")

    def close(self) -> None:
        if self.tasks:
            self.bars.stop()
