from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from services.control_plane.deps import LauncherDep, SessionDep
from services.control_plane.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def health(session: SessionDep, launcher: LauncherDep) -> Health:
    """Liveness plus what the service depends on: its database and the Ray cluster."""
    session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok", ray="ok" if launcher.reachable() else "unreachable")
