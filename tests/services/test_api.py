"""The REST API over a real uvicorn server on 127.0.0.1, a real SQLite file and a real local Ray cluster."""

import subprocess
import sys
import time

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from services.control_plane.settings import Settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


def settings(roots, ray_head, **overrides):
    values = dict(
        database_url=f"sqlite:///{roots}/state.db",
        ray_dashboard_url=ray_head,
        api_token=TOKEN,
        storage_roots=[str(roots / "runs")],
        data_roots=[str(roots / "inputs")],
        poll_interval_s=0.5,
        job_retries=1,
        max_body_bytes=64 * 1024,
    )
    return Settings(**(values | overrides))


@pytest.fixture
def api(roots, ray_head):
    with BackgroundServer(create_app(settings(roots, ray_head))) as server, httpx.Client(base_url=server.url) as client:
        yield client


def config(roots, name="api-run", storage="runs/r1", model="inputs/no-such-model", **extra):
    return {
        "name": name,
        "storage_uri": str(roots / storage),
        "model": {"path": str(roots / model), "dtype": "float32"},
        "data": {"path": str(roots / "inputs" / "d.jsonl")},
        "train": {
            "use_gpu": False,
            "precision": "fp32",
            "num_workers": 2,
            "micro_batch_size": 4,
            "global_batch_size": 8,
        },
        "iterations": [{}, {}],
        **extra,
    }


def wait_for(client, run_id, predicate, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if predicate(run):
            return run
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} never reached the expected state; last: {run}")


def test_health_and_openapi(api):
    assert api.get("/healthz").json() == {"status": "ok", "database": "ok", "ray": "ok"}
    spec = api.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/healthz",
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/iterations",
        "/runs/{run_id}/iterations/{index}",
        "/runs/{run_id}/launch",
        "/runs/{run_id}/cancel",
        "/runs/{run_id}/plots/{name}.png",
    }
    assert api.get("/docs").status_code == 200


def test_mutations_need_the_token(api, roots):
    body = {"config": config(roots)}
    assert api.post("/runs", json=body).status_code == 401
    wrong = api.post("/runs", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    assert api.post("/runs", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    created = api.post("/runs", json=body, headers=AUTH)
    assert created.status_code == 201
    run_id = created.json()["id"]
    for method, path, kwargs in [
        ("POST", f"/runs/{run_id}/launch", {"json": {}}),
        ("POST", f"/runs/{run_id}/cancel", {}),
        ("DELETE", f"/runs/{run_id}", {}),
    ]:
        assert api.request(method, path, **kwargs).status_code == 401
    assert api.get("/runs").status_code == 200  # reading needs no token


def test_a_server_without_a_token_accepts_no_changes(roots, ray_head):
    with BackgroundServer(create_app(settings(roots, ray_head, api_token=None))) as server:
        r = httpx.post(f"{server.url}/runs", json={"config": config(roots)}, headers=AUTH)
    assert r.status_code == 403 and "no API token configured" in r.json()["detail"]


def test_create_get_list_and_delete(api, roots):
    run = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()
    assert (run["state"], run["num_iterations"], run["iterations"]) == ("created", 2, [])
    assert (roots / "runs" / "r1" / "config.yaml").exists()  # what the Ray Job will read
    assert api.get(f"/runs/{run['id']}").json()["config"]["name"] == "api-run"
    listed = api.get("/runs", params={"limit": 10}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == run["id"]
    assert api.get(f"/runs/{run['id']}/iterations").json() == []
    assert api.delete(f"/runs/{run['id']}", headers=AUTH).status_code == 204
    assert api.get(f"/runs/{run['id']}").status_code == 404


@pytest.mark.parametrize(
    ("patch", "field", "message"),
    [
        ({"train": {"beta": -1}}, ["body", "config", "train", "beta"], "greater than 0"),
        ({"train": {"loss_type": "kto"}}, ["body", "config", "train", "loss_type"], "'sigmoid', 'hinge' or 'ipo'"),
        ({"prompts_per_iteration": "many"}, ["body", "config", "prompts_per_iteration"], "valid integer"),
        ({"surprise": 1}, ["body", "config", "surprise"], "Extra inputs are not permitted"),
    ],
)
def test_invalid_configs_get_422_with_field_errors(api, roots, patch, field, message):
    body = config(roots)
    for key, value in patch.items():
        body[key] = body[key] | value if isinstance(value, dict) and key in body else value
    r = api.post("/runs", json={"config": body}, headers=AUTH)
    assert r.status_code == 422
    errors = r.json()["detail"]
    assert any(e["loc"] == field and message in e["msg"] for e in errors), errors


def test_bad_requests_never_get_a_500(api, roots):
    cases = [
        api.post("/runs", content=b"{not json", headers=AUTH | {"content-type": "application/json"}),
        api.post("/runs", json=[], headers=AUTH),
        api.post("/runs", json={"config": None}, headers=AUTH),
        api.get("/runs", params={"limit": -1}),
        api.get("/runs", params={"offset": "x"}),
        api.get("/runs/%00"),
        api.get("/runs/nope/iterations/abc"),
        api.post("/runs/nope/launch", json={"iterations": 0}, headers=AUTH),
    ]
    assert [r.status_code for r in cases] == [422, 422, 422, 422, 422, 404, 422, 422]


def test_locations_are_confined_to_the_roots(api, roots):
    for patch, what in [
        ({"storage_uri": str(roots / "elsewhere")}, "storage_uri"),
        ({"storage_uri": str(roots / "runs" / ".." / "escape")}, "storage_uri"),
        ({"storage_uri": "s3://bucket/runs"}, "storage_uri"),
        ({"model": {"path": "/etc"}}, "model.path"),
        ({"data": {"path": str(roots / "runs" / "d.jsonl")}}, "data.path"),
    ]:
        r = api.post("/runs", json={"config": config(roots) | patch}, headers=AUTH)
        assert r.status_code == 403 and r.json()["detail"].startswith(what), r.json()
    (roots / "inputs" / "link").symlink_to("/etc")
    r = api.post("/runs", json={"config": config(roots, model="inputs/link")}, headers=AUTH)
    assert r.status_code == 403


def test_body_size_is_limited(api, roots):
    body = {"config": config(roots, name="big") | {"iterations": [{}] * 40000}}
    assert api.post("/runs", json=body, headers=AUTH).status_code == 413

    def chunks():
        yield b'{"config": '
        for _ in range(100):
            yield b" " * 1024
        yield b"}"

    r = api.post("/runs", content=chunks(), headers=AUTH | {"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_ids_get_404(api):
    assert api.get("/runs/doesnotexist").status_code == 404
    assert api.get("/runs/doesnotexist/iterations").status_code == 404
    assert api.post("/runs/doesnotexist/launch", json={}, headers=AUTH).status_code == 404
    assert api.post("/runs/doesnotexist/cancel", headers=AUTH).status_code == 404
    assert api.delete("/runs/doesnotexist", headers=AUTH).status_code == 404


def test_launch_conflicts_failures_and_retries_through_ray_jobs(api, roots):
    """The job of a run whose model does not exist fails; it is retried once, then the run fails."""
    conflict = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()
    assert api.post("/runs", json={"config": config(roots)}, headers=AUTH).status_code == 409  # same storage
    run_id = conflict["id"]
    assert api.post(f"/runs/{run_id}/launch", json={"iterations": 3}, headers=AUTH).status_code == 422
    launched = api.post(f"/runs/{run_id}/launch", json={"iterations": 2}, headers=AUTH)
    assert launched.status_code == 202 and [it["state"] for it in launched.json()["iterations"]] == ["pending"] * 2
    again = api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH)
    assert again.status_code == 409
    assert api.delete(f"/runs/{run_id}", headers=AUTH).status_code == 409
    run = wait_for(api, run_id, lambda r: r["state"] == "failed")
    first, second = run["iterations"]
    assert first["state"] == "failed" and first["attempts"] == 2 and first["job_id"].endswith("-iter0-try2")
    assert first["error"].startswith("FileNotFoundError: model.path")
    assert first["error"].startswith("FileNotFoundError: model.path")
    assert (
        "no-such-model is not a Hugging Face checkpoint (no config.json)"
        in first["error"].splitlines()[0].splitlines()[0]
    )
    assert second["state"] == "cancelled"
    assert run["error"].startswith("iteration 0 failed: FileNotFoundError: model.path")
    one = api.get(f"/runs/{run_id}/iterations/0").json()
    assert one["state"] == "failed" and api.get(f"/runs/{run_id}/iterations/7").status_code == 404


def test_the_control_plane_never_imports_torch():
    code = "import sys, services.control_plane.main, services.control_plane.cli; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
