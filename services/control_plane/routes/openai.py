"""/runs/{run_id}/v1: each run's model over the OpenAI API, for evaluation harnesses and OpenAI clients.

    openai.OpenAI(base_url="http://127.0.0.1:8000/runs/<run id>/v1", api_key="<SPIN_API_TOKEN>")

The requests go on, unchanged, to the run's generator (its vLLM engine's own OpenAI routes, on Serve's HTTP proxy),
so the answers are vLLM's; only these three routes pass, none of which can change a model. The model ids say run
and iteration (`<name>:sft`, `<name>:iter<k>`); `<name>` alone is whatever the run serves now.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from jobs.config import SpinConfig
from services.control_plane import store
from services.control_plane.deps import SettingsDep, get_session, read_token
from services.control_plane.errors import Unavailable, responses
from services.control_plane.settings import Settings

router = APIRouter(prefix="/runs/{run_id}/v1", tags=["openai"], dependencies=[Depends(read_token)])

# The body is vLLM's request object, validated by the generator: declared here as any JSON object.
_JSON_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
}
_OPENAI_ANSWER = {"content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}}}


def generator_url(
    run_id: str, session: Annotated[Session, Depends(get_session, scope="function")], settings: SettingsDep
) -> str:
    """The OpenAI base URL of the run's generator on Serve's HTTP proxy."""
    cfg = SpinConfig.model_validate(store.get_run(session, run_id).config)
    return f"{settings.serve_url.rstrip('/')}/{cfg.generator_app}/v1"


GeneratorDep = Annotated[str, Depends(generator_url)]


def _client(request: Request) -> httpx.AsyncClient:
    state = request.app.state
    if getattr(state, "serve_client", None) is None:
        settings: Settings = state.settings
        # Completions take as long as the engine does; the connection itself must come at once.
        state.serve_client = httpx.AsyncClient(timeout=httpx.Timeout(settings.openai_timeout_s, connect=5.0))
    client: httpx.AsyncClient = state.serve_client
    return client


async def _forward(request: Request, url: str) -> Response:
    client = _client(request)
    body = await request.body()
    headers = {"content-type": "application/json"} if body else {}
    forwarded = client.build_request(request.method, url, content=body, headers=headers)
    try:
        answer = await client.send(forwarded, stream=True)
    except httpx.TransportError as e:
        raise Unavailable(f"the run's generator cannot be reached at {url}: {e}") from e
    if answer.status_code == 404 and "json" not in answer.headers.get("content-type", ""):
        await answer.aclose()  # Serve's own 404: no application under that prefix
        raise Unavailable("the run has no generator serving now (it serves from its first iteration on)")
    kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "x-request-id")}
    return StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
    )


@router.get("/models", responses={200: _OPENAI_ANSWER, **responses(401, 404, 503)})
async def list_models(request: Request, url: GeneratorDep) -> Response:
    """The run's served model ids (OpenAI `GET /v1/models`)."""
    return await _forward(request, f"{url}/models")


@router.post("/completions", openapi_extra=_JSON_BODY, responses={200: _OPENAI_ANSWER, **responses(401, 404, 503)})
async def completions(request: Request, url: GeneratorDep) -> Response:
    """OpenAI `POST /v1/completions` on the run's model."""
    return await _forward(request, f"{url}/completions")


@router.post("/chat/completions", openapi_extra=_JSON_BODY, responses={200: _OPENAI_ANSWER, **responses(401, 404, 503)})
async def chat_completions(request: Request, url: GeneratorDep) -> Response:
    """OpenAI `POST /v1/chat/completions` on the run's model, with the model's chat template."""
    return await _forward(request, f"{url}/chat/completions")
