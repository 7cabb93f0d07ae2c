"""/runs: create, list, get, launch, cancel and delete SPIN runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from jobs.config import SpinConfig
from jobs.report.render import report_json
from jobs.report.results import load_run
from jobs.storage import FolderInUse, RunStorage
from services.control_plane import store
from services.control_plane.confine import is_within
from services.control_plane.deps import LauncherDep, SessionDep, SettingsDep, TokenDep
from services.control_plane.errors import Conflict, Forbidden, responses
from services.control_plane.reconciler import config_uri
from services.control_plane.schemas import IterationPublic, LaunchRequest, RunCreate, RunPublic, RunsPublic
from services.control_plane.settings import Settings

router = APIRouter(prefix="/runs", tags=["runs"])


def _check_locations(cfg: SpinConfig, settings: Settings) -> None:
    if not is_within(cfg.storage_uri, settings.storage_roots):
        raise Forbidden(f"storage_uri {cfg.storage_uri} is outside the allowed storage roots")
    inputs = [("model.path", cfg.model.path)] + ([("data.path", cfg.data.path)] if cfg.data.path else [])
    for field, location in inputs:
        if not is_within(location, settings.data_roots):
            raise Forbidden(f"{field} {location} is outside the allowed data roots")


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=[TokenDep],
    responses=responses(401, 403, 409, 413),
)
def create_run(body: RunCreate, session: SessionDep, settings: SettingsDep) -> RunPublic:
    """Create a run from a validated config. Nothing runs until iterations are launched."""
    _check_locations(body.config, settings)
    run = store.create_run(session, body.config)
    cfg = body.config.model_copy(update={"run_id": run.id})
    run.config = cfg.model_dump(mode="json")
    session.flush()
    storage = RunStorage(cfg.storage_uri)
    try:
        storage.claim(cfg.identity, cfg.fingerprint())
    except FolderInUse as e:
        raise Conflict(str(e)) from e
    storage.write_text(storage.config(), cfg.to_yaml())
    return RunPublic.model_validate(run)


@router.get("", response_model=RunsPublic)
def list_runs(
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> RunsPublic:
    runs, count = store.list_runs(session, offset, limit)
    return RunsPublic(data=[RunPublic.model_validate(r) for r in runs], count=count)


@router.get("/{run_id}", response_model=RunPublic, responses=responses(404))
def get_run(run_id: str, session: SessionDep) -> RunPublic:
    return RunPublic.model_validate(store.get_run(session, run_id))


@router.get("/{run_id}/iterations", response_model=list[IterationPublic], responses=responses(404))
def list_iterations(run_id: str, session: SessionDep) -> list[IterationPublic]:
    return [IterationPublic.model_validate(it) for it in store.get_run(session, run_id).iterations]


@router.get("/{run_id}/iterations/{index}", response_model=IterationPublic, responses=responses(404))
def get_iteration(run_id: str, index: int, session: SessionDep) -> IterationPublic:
    return IterationPublic.model_validate(store.get_iteration(store.get_run(session, run_id), index))


@router.get("/{run_id}/report", responses=responses(404))
def get_report(run_id: str, session: SessionDep) -> dict[str, Any]:
    """The run's report: each model's test scores, and every paired comparison (difference, 95% bootstrap interval,
    McNemar p, verdict) of the SPIN models against the SFT model and continued SFT."""
    return report_json(load_run(store.get_run(session, run_id).storage_uri))


@router.post(
    "/{run_id}/launch",
    response_model=RunPublic,
    status_code=202,
    dependencies=[TokenDep],
    responses=responses(401, 403, 404, 409, 413),
)
def launch(run_id: str, body: LaunchRequest, session: SessionDep) -> RunPublic:
    """Queue the next `iterations` iterations; they run one after another as Ray Jobs."""
    run = store.get_run(session, run_id)
    store.launch(session, run, body.iterations)
    return RunPublic.model_validate(run)


@router.post(
    "/{run_id}/cancel", response_model=RunPublic, dependencies=[TokenDep], responses=responses(401, 403, 404, 409, 503)
)
def cancel(run_id: str, session: SessionDep, launcher: LauncherDep) -> RunPublic:
    """Stop the running iteration's job and drop the queued ones."""
    run = store.get_run(session, run_id)
    for it in store.cancel(run):
        assert it.job_id is not None
        launcher.stop(it.job_id)
    launcher.release(run.id, config_uri(run))
    return RunPublic.model_validate(run)


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[TokenDep],
    responses=responses(401, 403, 404, 409),
)
def delete_run(run_id: str, session: SessionDep, launcher: LauncherDep) -> Response:
    """Forget a run that is not running, releasing its generator if one is left. Its storage (models, pairs,
    metrics) is kept."""
    run = store.get_run(session, run_id)
    store.delete_run(session, run)
    launcher.release(run.id, config_uri(run))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
