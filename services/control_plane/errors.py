"""Domain errors, and their single mapping to HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ControlPlaneError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ControlPlaneError):
    status_code = 404


class Conflict(ControlPlaneError):
    status_code = 409


class Invalid(ControlPlaneError):
    status_code = 422


class Forbidden(ControlPlaneError):
    status_code = 403


class Unavailable(ControlPlaneError):
    status_code = 503


def register(app: FastAPI) -> None:
    @app.exception_handler(ControlPlaneError)
    async def _domain_error(request: Request, exc: ControlPlaneError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
