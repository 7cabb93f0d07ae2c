"""/runs/{id}/v1 over real HTTP: the control plane on 127.0.0.1 in front of an upstream on 127.0.0.1 that answers
as Serve's proxy does (the real generator behind it is tested in tests/integration/test_rest_run.py)."""

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from jobs.config import SpinConfig
from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer, free_port
from tests.services.control_plane.launchers import RecordingLauncher
from tests.services.control_plane.test_api import AUTH, config, settings


def upstream_app(seen):
    """Serve's proxy in miniature: the run's application answers under its prefix, anything else is Serve's 404."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def answer(path: str, request: Request):
        body = await request.body()
        seen.append((request.method, f"/{path}", body, request.headers.get("authorization")))
        if not path.startswith("spin-generator-api-run-"):
            return PlainTextResponse(f"Path '/{path}' not found.", status_code=404)
        if path.endswith("/v1/models"):
            return JSONResponse({"object": "list", "data": [{"id": "api-run:sft", "object": "model"}]})
        request_body = json.loads(body)
        if request_body.get("model") == "nope":
            return JSONResponse({"error": {"message": "no such model", "code": 404}}, status_code=404)
        if request_body.get("stream"):
            return StreamingResponse(iter(['data: {"n": 1}\n\n', "data: [DONE]\n\n"]), media_type="text/event-stream")
        return JSONResponse({"object": "text_completion", "echo": request_body})

    return app


def control_plane(roots, serve_url, **overrides):
    """The control plane (no reconciler) whose Serve proxy is at `serve_url`."""
    return create_app(settings(roots, serve_url=serve_url, **overrides), launcher=RecordingLauncher(), reconcile=False)


@pytest.fixture
def proxied(roots):
    seen = []
    with BackgroundServer(upstream_app(seen)) as upstream:
        with BackgroundServer(control_plane(roots, upstream.url)) as server:
            run = httpx.post(f"{server.url}/runs", json={"config": config(roots)}, headers=AUTH).json()
            yield server.url, run, seen


def test_requests_reach_the_runs_generator_unchanged_and_answers_come_back(proxied):
    url, run, seen = proxied
    app = SpinConfig.model_validate(run["config"]).generator_app
    base = f"{url}/runs/{run['id']}/v1"
    body = {"model": "api-run", "prompt": "1 + 1 =", "max_tokens": 3, "temperature": 0}
    answer = httpx.post(f"{base}/completions", json=body, headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"object": "text_completion", "echo": body}
    method, path, forwarded, authorization = seen[-1]
    assert (method, path, json.loads(forwarded)) == ("POST", f"/{app}/v1/completions", body)
    assert authorization is None  # the control plane's token stays with the control plane
    assert httpx.get(f"{base}/models", headers=AUTH).json()["data"][0]["id"] == "api-run:sft"
    assert seen[-1][:2] == ("GET", f"/{app}/v1/models")
    chat = {"model": "api-run", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{base}/chat/completions", json=chat, headers=AUTH).json()["echo"] == chat


def test_the_generators_errors_and_streams_pass_through(proxied):
    url, run, _ = proxied
    base = f"{url}/runs/{run['id']}/v1"
    missing = httpx.post(f"{base}/completions", json={"model": "nope", "prompt": "x"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no such model"
    with httpx.stream("POST", f"{base}/completions", json={"prompt": "x", "stream": True}, headers=AUTH) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert list(streamed.iter_lines()) == ['data: {"n": 1}', "", "data: [DONE]", ""]


def test_the_token_is_required_when_the_server_has_one(proxied):
    url, run, seen = proxied
    before = len(seen)
    assert httpx.get(f"{url}/runs/{run['id']}/v1/models").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.post(f"{url}/runs/{run['id']}/v1/completions", json={}, headers=bad).status_code == 401
    assert len(seen) == before  # refused before anything reached the generator


def test_a_server_without_a_token_serves_reads_to_anyone(roots):
    seen = []
    with BackgroundServer(upstream_app(seen)) as upstream:
        with BackgroundServer(control_plane(roots, upstream.url)) as server:
            run = httpx.post(f"{server.url}/runs", json={"config": config(roots)}, headers=AUTH).json()
        with BackgroundServer(control_plane(roots, upstream.url, api_token=None)) as server:
            assert httpx.get(f"{server.url}/runs/{run['id']}/v1/models").status_code == 200


def test_unknown_runs_get_404_and_a_run_without_a_generator_503(proxied, roots):
    url, run, _ = proxied
    assert httpx.get(f"{url}/runs/no-such-run/v1/models", headers=AUTH).status_code == 404
    other = httpx.post(f"{url}/runs", json={"config": config(roots, name="other", storage="runs/r2")}, headers=AUTH)
    idle = httpx.get(f"{url}/runs/{other.json()['id']}/v1/models", headers=AUTH)  # Serve has no such application
    assert idle.status_code == 503 and "no generator serving" in idle.json()["detail"]
    with BackgroundServer(control_plane(roots, f"http://127.0.0.1:{free_port()}")) as server:
        down = httpx.get(f"{server.url}/runs/{run['id']}/v1/models", headers=AUTH)
    assert down.status_code == 503 and "cannot be reached" in down.json()["detail"]
