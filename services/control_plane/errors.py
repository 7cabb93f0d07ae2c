"""Domain errors, and their single mapping to HTTP responses."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel


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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The input a field refused may be what JSON cannot hold (1e999 parses as inf): it is shown as text then.
        return JSONResponse({"detail": [_json_safe(e) for e in exc.errors()]}, status_code=422)


def _json_safe(error: dict[str, Any]) -> dict[str, Any]:
    out = jsonable_encoder(error | ({"ctx": _text(error["ctx"])} if "ctx" in error else {}))
    try:
        json.dumps(out, allow_nan=False)
        return dict(out)
    except ValueError:
        return dict(jsonable_encoder(out | {"input": repr(error.get("input"))}, custom_encoder={float: repr}))


def _text(ctx: Any) -> Any:
    return {k: str(v) for k, v in ctx.items()} if isinstance(ctx, dict) else ctx


class ErrorDetail(BaseModel):
    detail: str


_DESCRIPTIONS = {
    401: "Missing or wrong bearer token",
    403: "Not allowed: no API token configured, or a location outside the allowed roots",
    404: "No such run or iteration",
    409: "Conflicts with the run's state, or with another run's storage",
    413: "Request body too large",
    503: "The Ray cluster cannot be reached",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route declares in the OpenAPI document, beside its 2xx and 422."""
    return {code: {"model": ErrorDetail, "description": _DESCRIPTIONS[code]} for code in codes}
