"""SPIN as a service: a two-iteration run created and driven entirely over REST, on local Ray, surviving a
killed control plane; and a run cancelled mid-iteration."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.demo.arithmetic import make_problems, write_jsonl
from jobs.storage import RunStorage
from services.control_plane.client import SpinAPIError, SpinClient
from services.control_plane.server import BackgroundServer, free_port
from tests.factories import tiny_run_config

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
TOKEN = "rest-run-token"


def run_config(root, sft_model_dir, name, iterations=2):
    return tiny_run_config(
        name,
        str(root / "runs" / name),
        sft_model_dir,
        str(root / "inputs" / "train.jsonl"),
        iterations=[{}] * iterations,
    )


@pytest.fixture
def root(tmp_path, sft_model_dir):
    write_jsonl(make_problems(200, seed=31), tmp_path / "inputs" / "train.jsonl")
    (tmp_path / "runs").mkdir()
    return tmp_path


def server_env(root, ray_head, sft_model_dir):
    return os.environ | {
        "SPIN_DATABASE_URL": f"sqlite:///{root}/control/state.db",
        "SPIN_RAY_DASHBOARD_URL": ray_head,
        "SPIN_API_TOKEN": TOKEN,
        "SPIN_STORAGE_ROOTS": json.dumps([str(root / "runs")]),
        "SPIN_DATA_ROOTS": json.dumps([str(root / "inputs"), os.path.dirname(sft_model_dir)]),
        "SPIN_POLL_INTERVAL_S": "1",
    }


def start_server(env, port):
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs", "server", "--host", "127.0.0.1", "--port", str(port), "--no-local-ray"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = SpinClient(f"http://127.0.0.1:{port}", TOKEN)
    for _ in range(120):
        try:
            client.health()
            return process, client
        except Exception:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError("the control plane did not start")


def wait_until(client, run_id, predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if predicate(run):
            return run
        time.sleep(1)
    raise TimeoutError(f"run {run_id}: condition not met in {timeout_s}s; last state {run}")


def test_two_iterations_over_rest_survive_a_killed_control_plane(ray_cluster, ray_head, sft_model_dir, root):
    from ray import serve
    from ray.job_submission import JobSubmissionClient

    from jobs.config import SpinConfig
    from jobs.iteration.context import generator_app_name

    env, port = server_env(root, ray_head, sft_model_dir), free_port()
    server, client = start_server(env, port)
    try:
        run = client.create_run(run_config(root, sft_model_dir, "rest"))
        client.launch(run["id"], iterations=2)
        running = wait_until(client, run["id"], lambda r: r["iterations"][0]["stage"] in ("score", "train"), 600)
        job_id = running["iterations"][0]["job_id"]

        server.send_signal(signal.SIGKILL)  # no shutdown, no last write
        server.wait(timeout=30)
        assert JobSubmissionClient(ray_head).get_job_status(job_id).value in ("RUNNING", "SUCCEEDED")

        server, client = start_server(env, port)
        final = wait_until(client, run["id"], lambda r: r["state"] not in ("running",), 1500)
    finally:
        server.kill()
        server.wait(timeout=30)

    assert final["state"] == "completed", final
    first, second = final["iterations"]
    assert first["job_id"] == job_id and first["attempts"] == 1  # adopted, not resubmitted
    assert [it["state"] for it in final["iterations"]] == ["succeeded", "succeeded"]
    storage = RunStorage(final["storage_uri"])
    assert all(storage.is_complete(storage.model(k)) for k in (0, 1))
    # Iteration 1 starts from iteration 0's model and trains on both iterations' pairs (the paper's mixing).
    assert second["metrics"]["model_in"] == storage.model(0)
    assert first["metrics"]["train"]["pairs"] == 24 and first["metrics"]["train"]["pairs_from_iterations"] == [0]
    assert second["metrics"]["train"]["pairs"] == 48 and second["metrics"]["train"]["pairs_from_iterations"] == [0, 1]
    assert second["metrics"]["train"]["steps"] == 6  # 48 pairs / 2 workers / 4 per step
    assert set(second["metrics"]["stage_seconds"]) == {"generate", "score", "train", "publish"}
    # The run's last job released its generator.
    cfg = SpinConfig.model_validate(final["config"])
    assert generator_app_name(cfg) not in serve.status().applications


def test_cancelling_stops_the_running_job(ray_cluster, ray_head, sft_model_dir, root, monkeypatch):
    from ray import serve
    from ray.job_submission import JobSubmissionClient

    from jobs.config import SpinConfig
    from jobs.iteration.context import generator_app_name
    from services.control_plane.main import create_app
    from services.control_plane.settings import Settings

    for key, value in server_env(root, ray_head, sft_model_dir).items():
        if key.startswith("SPIN_"):
            monkeypatch.setenv(key, value)
    with BackgroundServer(create_app(Settings())) as server:
        client = SpinClient(server.url, TOKEN)
        run = client.create_run(run_config(root, sft_model_dir, "cancel", iterations=1))
        client.launch(run["id"])
        running = wait_until(client, run["id"], lambda r: r["iterations"][0]["state"] == "running", 300)
        cancelled = client.cancel(run["id"])
        assert cancelled["state"] == "cancelled" and cancelled["iterations"][0]["state"] == "cancelled"
        with pytest.raises(SpinAPIError) as e:
            client.cancel(run["id"])
        assert e.value.status_code == 409
    jobs = JobSubmissionClient(ray_head)
    job_id = running["iterations"][0]["job_id"]
    deadline = time.monotonic() + 120
    while jobs.get_job_status(job_id).value != "STOPPED" and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs.get_job_status(job_id).value == "STOPPED"
    app = generator_app_name(SpinConfig.model_validate(cancelled["config"]))
    while app in serve.status().applications and time.monotonic() < deadline:
        time.sleep(1)
    assert app not in serve.status().applications
