"""The monitoring page at / and the plots it shows."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from jobs.report import plots
from jobs.report.results import load_run
from services.control_plane import store
from services.control_plane.deps import SessionDep
from services.control_plane.errors import NotFound, responses

router = APIRouter(tags=["page"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(resources.files("services.control_plane").joinpath("static/index.html").read_text())


PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}


@router.get("/runs/{run_id}/plots/{name}.png", responses=PNG | responses(404))
def plot(run_id: str, name: str, session: SessionDep) -> Response:
    """A plot of the run (loss, margins, accuracies, task_metric), drawn from its stored metrics."""
    run = store.get_run(session, run_id)
    if name not in plots.PLOTS:
        raise NotFound(f"no plot named {name!r}; choose one of {', '.join(plots.PLOTS)}")
    png = plots.PLOTS[name](load_run(run.storage_uri))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
