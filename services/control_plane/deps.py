"""Dependencies shared by the routes: the database session, the launcher, and the token check."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.control_plane.errors import Conflict, ControlPlaneError, Forbidden
from services.control_plane.launcher import Launcher
from services.control_plane.settings import Settings


class Unauthorized(ControlPlaneError):
    status_code = 401


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A session committed when the route returns, before the response is sent."""
    session = request.app.state.sessions()
    try:
        yield session
        session.commit()
    except StaleDataError as e:
        session.rollback()
        raise Conflict("the run changed while this request was being handled; try again") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_launcher(request: Request) -> Launcher:
    return request.app.state.launcher  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="The control plane's API token (SPIN_API_TOKEN).")


def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutating requests carry `Authorization: Bearer <token>`, compared in constant time."""
    if settings.api_token is None:
        raise Forbidden("this server has no API token configured (SPIN_API_TOKEN), so it accepts no changes")
    if credentials is None:
        raise Unauthorized("missing bearer token")
    expected = settings.api_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("invalid bearer token")


def read_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reads that cost compute (a run's model over the OpenAI API) carry the token when the server has one."""
    if settings.api_token is not None:
        require_token(settings, credentials)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
TokenDep = Depends(require_token)
