"""The control plane's FastAPI application.

app = create_app(Settings())     # no side effects at import; the reconciler starts with the app
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.control_plane import errors
from services.control_plane.db import make_engine, make_sessionmaker
from services.control_plane.launcher import Launcher, RayJobLauncher
from services.control_plane.reconciler import Reconciler
from services.control_plane.routes import health, openai, page, runs
from services.control_plane.settings import Settings

logger = logging.getLogger("spin.control_plane")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not they declare their length.

    The body is read here, up to the limit, and handed on whole: the API's bodies are small configs.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return dict(await receive())
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = b'{"detail":"request body too large"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(
    settings: Settings | None = None, *, launcher: Launcher | None = None, reconcile: bool = True
) -> FastAPI:
    """The app, its database and its reconciler; `launcher` defaults to Ray Jobs on `settings.ray_dashboard_url`."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    launcher = launcher or RayJobLauncher(settings.ray_dashboard_url, settings.job_python, settings.job_num_cpus)
    reconciler = Reconciler(sessions, launcher, settings.job_retries, lease_s=max(10.0, 5 * settings.poll_interval_s))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_reconcile_forever(reconciler, settings.poll_interval_s)) if reconcile else None
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.dispose()
            if getattr(app.state, "serve_client", None) is not None:
                await app.state.serve_client.aclose()

    app = FastAPI(
        title="SPIN control plane",
        version="0.1.0",
        description="Start and track SPIN self-play fine-tuning runs on Ray.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.sessions, app.state.launcher = settings, sessions, launcher
    app.state.reconciler = reconciler
    errors.register(app)
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(openai.router)
    app.include_router(page.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Options)
    return app


class Options:
    """`OPTIONS <path>` answers 204 with every method the path has (Starlette would name the first route's only)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        from starlette.routing import Match

        router = scope["app"].router
        methods = set()
        for route in router.routes:
            match, _ = route.matches({**scope, "method": "GET"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods |= route.methods
        if not methods:
            await self.app(scope, receive, send)  # an unknown path: its 404
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"})).encode()
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
        await send({"type": "http.response.body", "body": b""})


async def _reconcile_forever(reconciler: Reconciler, interval_s: float) -> None:
    # The first pass runs at start-up: records are brought in line with the jobs Ray knows before anything else.
    while True:
        try:
            await asyncio.to_thread(reconciler.tick)
        except Exception:
            logger.exception("reconciliation pass failed")
        await asyncio.sleep(interval_s)
