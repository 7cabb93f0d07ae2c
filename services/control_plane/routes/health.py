from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from services.control_plane.deps import LauncherDep, SessionDep
from services.control_plane.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def health(request: Request, session: SessionDep, launcher: LauncherDep) -> Health:
    """Liveness plus what the service depends on (its database, the Ray cluster), and whether it reconciles."""
    session.execute(text("SELECT 1"))
    reconciler = request.app.state.reconciler
    return Health(
        status="ok",
        database="ok",
        ray="ok" if launcher.reachable() else "unreachable",
        reconciler="active" if reconciler.active else "standby",
    )
