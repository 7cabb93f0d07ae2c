"""The REST API as deployed: a real uvicorn server on 127.0.0.1, a real SQLite file and a real local Ray cluster
whose Jobs API runs the iterations. The API's rules themselves are tested in-process in test_api.py."""

import time

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from tests.services.control_plane import test_api
from tests.services.control_plane.test_api import AUTH, config

pytestmark = pytest.mark.ray


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


def settings(roots, ray_head, **overrides):
    return test_api.settings(roots, ray_dashboard_url=ray_head, poll_interval_s=0.5, **overrides)


def wait_for(client, run_id, predicate, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if predicate(run):
            return run
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} never reached the expected state; last: {run}")


def test_a_failing_job_on_ray_is_retried_then_fails_the_run(roots, ray_head):
    """The job of a run whose model does not exist fails on the cluster; it is retried once, then the run fails."""
    with BackgroundServer(create_app(settings(roots, ray_head))) as server, httpx.Client(base_url=server.url) as api:
        health = api.get("/healthz").json()
        assert health == {"status": "ok", "database": "ok", "ray": "ok", "reconciler": health["reconciler"]}
        assert health["reconciler"] in ("active", "standby")
        run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
        assert api.post(f"/runs/{run_id}/launch", json={"iterations": 2}, headers=AUTH).status_code == 202
        run = wait_for(api, run_id, lambda r: r["state"] == "failed")
    first, second = run["iterations"]
    assert first["state"] == "failed" and first["attempts"] == 2 and first["job_id"].endswith("-iter0-try2")
    assert first["error"].splitlines()[0].startswith("FileNotFoundError: model.path ")
    assert "no-such-model is not a Hugging Face checkpoint (no config.json)" in first["error"].splitlines()[0]
    assert second["state"] == "cancelled"
    assert run["error"].startswith("iteration 0 failed: FileNotFoundError: model.path")
