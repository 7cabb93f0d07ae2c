"""The control plane's rules, in-process: FastAPI's TestClient, a real SQLite file and storage folder, and a
launcher that records submissions instead of a Ray cluster (tests/services/control_plane/test_api_live.py runs
the same app against real Ray Jobs)."""

import json

import pytest
from fastapi.testclient import TestClient

from services.control_plane.main import create_app
from services.control_plane.settings import Settings
from tests.factories import iteration_metrics, tiny_run_config
from tests.services.control_plane.launchers import RecordingLauncher

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(roots, **overrides):
    values = dict(
        database_url=f"sqlite:///{roots}/state.db",
        api_token=TOKEN,
        storage_roots=[str(roots / "runs")],
        data_roots=[str(roots / "inputs")],
        job_retries=1,
        max_body_bytes=64 * 1024,
    )
    return Settings(**(values | overrides))


def config(roots, name="api-run", storage="runs/r1", model="inputs/no-such-model", **overrides):
    return (
        tiny_run_config(
            name, str(roots / storage), str(roots / model), str(roots / "inputs" / "d.jsonl"), iterations=[{}, {}]
        )
        | overrides
    )


@pytest.fixture
def launcher():
    return RecordingLauncher()


@pytest.fixture
def app(roots, launcher):
    return create_app(settings(roots), launcher=launcher, reconcile=False)


@pytest.fixture
def api(app):
    with TestClient(app) as client:
        yield client


def tick(app):
    """One reconciliation pass, as the server's loop runs every poll interval."""
    app.state.reconciler.tick()


def test_health_and_openapi(api, app):
    assert api.get("/healthz").json() == {"status": "ok", "database": "ok", "ray": "ok", "reconciler": "standby"}
    tick(app)  # the first pass takes the reconciling lease
    assert api.get("/healthz").json()["reconciler"] == "active"
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
        "/runs/{run_id}/report",
        "/runs/{run_id}/v1/models",
        "/runs/{run_id}/v1/completions",
        "/runs/{run_id}/v1/chat/completions",
    }
    assert api.get("/docs").status_code == 200
    # Every route declares the errors it answers with, beside its 2xx and 422.
    assert set(spec["paths"]["/runs"]["post"]["responses"]) == {"201", "401", "403", "409", "413", "422"}
    assert set(spec["paths"]["/runs/{run_id}"]["delete"]["responses"]) == {"204", "401", "403", "404", "409", "422"}


def test_mutations_need_the_token(api, roots):
    body = {"config": config(roots)}
    assert api.post("/runs", json=body).status_code == 401
    wrong = api.post("/runs", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    assert api.post("/runs", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert api.get("/runs").json()["count"] == 0  # nothing was created by the refused calls
    created = api.post("/runs", json=body, headers=AUTH)
    assert created.status_code == 201
    run_id = created.json()["id"]
    for method, path, kwargs in [
        ("POST", f"/runs/{run_id}/launch", {"json": {}}),
        ("POST", f"/runs/{run_id}/cancel", {}),
        ("DELETE", f"/runs/{run_id}", {}),
    ]:
        assert api.request(method, path, **kwargs).status_code == 401
    assert api.get(f"/runs/{run_id}").json()["state"] == "created"  # reading needs no token; nothing changed


def test_a_server_without_a_token_accepts_no_changes(roots, launcher):
    with TestClient(create_app(settings(roots, api_token=None), launcher=launcher, reconcile=False)) as client:
        r = client.post("/runs", json={"config": config(roots)}, headers=AUTH)
    assert r.status_code == 403 and "no API token configured" in r.json()["detail"]


def test_create_get_list_and_delete(api, roots):
    run = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()
    assert (run["state"], run["num_iterations"], run["iterations"]) == ("created", 2, [])
    assert "name: api-run" in (roots / "runs" / "r1" / "config.yaml").read_text()  # what the Ray Job will read
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
        (
            {"train": {"loss_type": "kto"}},
            ["body", "config", "train", "loss_type"],
            "'sigmoid', 'hinge', 'ipo', 'dpop', 'sppo_hard' or 'bco_pair'",
        ),
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


def test_bad_requests_never_get_a_500(api):
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
    assert api.get("/runs").json()["count"] == 0 and not (roots / "elsewhere").exists()


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


def test_launch_conflicts_and_a_failing_job_retried_once(api, app, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    assert api.post("/runs", json={"config": config(roots)}, headers=AUTH).status_code == 409  # same storage
    assert api.post(f"/runs/{run_id}/launch", json={"iterations": 3}, headers=AUTH).status_code == 422
    launched = api.post(f"/runs/{run_id}/launch", json={"iterations": 2}, headers=AUTH)
    assert launched.status_code == 202 and [it["state"] for it in launched.json()["iterations"]] == ["pending"] * 2
    assert api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH).status_code == 409
    assert api.delete(f"/runs/{run_id}", headers=AUTH).status_code == 409

    tick(app)
    assert launcher.submitted == [(f"spin-{run_id}-iter0-try1", str(roots / "runs" / "r1" / "config.yaml"), 0)]
    trace = "Traceback (most recent call last):\n  ...\nFileNotFoundError: model.path x is not a checkpoint"
    launcher.finish(f"spin-{run_id}-iter0-try1", "FAILED", "exit 1", logs=trace)
    tick(app)  # failed: resubmitted (job_retries 1) ...
    tick(app)
    assert [s[0] for s in launcher.submitted] == [f"spin-{run_id}-iter0-try1", f"spin-{run_id}-iter0-try2"]
    launcher.finish(f"spin-{run_id}-iter0-try2", "FAILED", "exit 1", logs=trace)
    tick(app)  # ... and failed again: the run fails, the queued iteration is cancelled
    run = api.get(f"/runs/{run_id}").json()
    first, second = run["iterations"]
    assert run["state"] == "failed" and (first["state"], first["attempts"], second["state"]) == (
        "failed",
        2,
        "cancelled",
    )
    assert first["error"].splitlines()[0] == "FileNotFoundError: model.path x is not a checkpoint"
    assert run["error"] == "iteration 0 failed: FileNotFoundError: model.path x is not a checkpoint"
    assert launcher.released == [run_id]  # a failed run keeps no generator
    assert api.get(f"/runs/{run_id}/iterations/0").json()["state"] == "failed"
    assert api.get(f"/runs/{run_id}/iterations/7").status_code == 404


def test_a_succeeded_job_records_its_metrics_and_the_next_iteration_starts(api, app, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 2}, headers=AUTH)
    tick(app)
    metrics = iteration_metrics(0, task_metric=0.5, accuracy=0.7, margin=0.2, nll=0.3, losses=[0.69, 0.6])
    (roots / "runs" / "r1" / "iter_0").mkdir(parents=True)
    (roots / "runs" / "r1" / "iter_0" / "metrics.json").write_text(json.dumps(metrics.model_dump(mode="json")))
    launcher.finish(f"spin-{run_id}-iter0-try1", "SUCCEEDED")
    tick(app)
    tick(app)
    first, second = api.get(f"/runs/{run_id}").json()["iterations"]
    assert first["state"] == "succeeded" and first["metrics"]["train"]["final"]["loss"] == 0.6
    assert first["metrics"]["evaluation"]["diagnostics"]["rewards/accuracies"] == 0.7
    assert second["state"] == "submitted" and launcher.submitted[-1][2] == 1
    report = api.get(f"/runs/{run_id}/report").json()  # the per-prompt results were never stored: no comparison
    assert [r["model"] for r in report["rows"]] == ["SPIN iteration 0"] and report["comparisons"] == []


def test_cancel_stops_the_running_job_once(api, app, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH)
    tick(app)
    cancelled = api.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["iterations"][0]["state"] == "cancelled"
    assert launcher.stopped == [f"spin-{run_id}-iter0-try1"] and launcher.released == [run_id]
    assert api.post(f"/runs/{run_id}/cancel", headers=AUTH).status_code == 409


def test_the_control_plane_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, services.control_plane.main, services.control_plane.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_that_never_launched_has_nothing_to_cancel(api, roots):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    r = api.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert r.status_code == 409 and "nothing to cancel" in r.json()["detail"]


def test_deleting_a_run_releases_its_generator(api, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    assert api.delete(f"/runs/{run_id}", headers=AUTH).status_code == 204 and launcher.released == [run_id]


def test_options_names_every_method_of_a_path(api, roots):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    r = api.options(f"/runs/{run_id}")
    assert r.status_code == 204 and r.headers["allow"] == "DELETE, GET, OPTIONS"
    assert api.options("/runs").headers["allow"] == "GET, OPTIONS, POST"


def test_an_error_retrying_cannot_mend_is_not_retried(api, app, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH)
    tick(app)
    log = "jobs.sft_rows.BadRowsError: 3 SFT row(s) cannot be used\n[spin] final error: retrying cannot help\n"
    launcher.finish(f"spin-{run_id}-iter0-try1", "FAILED", "exit 3", logs=log)
    tick(app)
    tick(app)
    run = api.get(f"/runs/{run_id}").json()
    assert run["state"] == "failed" and run["iterations"][0]["attempts"] == 1 and len(launcher.submitted) == 1
    assert run["error"] == "iteration 0 failed: jobs.sft_rows.BadRowsError: 3 SFT row(s) cannot be used"


def test_a_retry_that_succeeds_clears_the_first_attempts_error(api, app, roots, launcher):
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH)
    tick(app)
    launcher.finish(f"spin-{run_id}-iter0-try1", "FAILED", "node lost", logs="RuntimeError: node lost")
    tick(app)
    tick(app)
    metrics = iteration_metrics(0, task_metric=0.5, accuracy=0.7, margin=0.2, nll=0.3, losses=[0.69])
    (roots / "runs" / "r1" / "iter_0").mkdir(parents=True, exist_ok=True)
    (roots / "runs" / "r1" / "iter_0" / "metrics.json").write_text(json.dumps(metrics.model_dump(mode="json")))
    launcher.finish(f"spin-{run_id}-iter0-try2", "SUCCEEDED")
    tick(app)
    it = api.get(f"/runs/{run_id}").json()["iterations"][0]
    assert (it["state"], it["attempts"], it["error"]) == ("succeeded", 2, None)


def test_a_second_control_plane_on_the_database_serves_reads_and_acts_on_nothing(roots, app, api, launcher):
    other_launcher = RecordingLauncher()
    other = create_app(settings(roots), launcher=other_launcher, reconcile=False)
    run_id = api.post("/runs", json={"config": config(roots)}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 1}, headers=AUTH)
    tick(app)
    tick(other)
    tick(app)
    tick(other)
    assert len(launcher.submitted) == 1 and other_launcher.submitted == [] and other_launcher.stopped == []
    with TestClient(other) as client:
        assert client.get("/healthz").json()["reconciler"] == "standby"
        assert client.get(f"/runs/{run_id}").json()["iterations"][0]["state"] == "submitted"  # it still reads


@pytest.mark.parametrize("keep_serving", [False, True])
def test_a_run_its_stopping_rule_ends_releases_its_generator_unless_kept(api, app, roots, launcher, keep_serving):
    body = config(roots, stopping={"enabled": True}, generator={"keep_serving": keep_serving})
    body["data"] |= {"validation_prompts": 10}
    run_id = api.post("/runs", json={"config": body}, headers=AUTH).json()["id"]
    api.post(f"/runs/{run_id}/launch", json={"iterations": 2}, headers=AUTH)
    tick(app)
    # Held-out reward accuracy 0.5 and margin 0: the model cannot tell its answers from the real ones.
    metrics = iteration_metrics(0, task_metric=0.5, accuracy=0.5, margin=0.0, nll=0.3, losses=[0.69])
    (roots / "runs" / "r1" / "iter_0").mkdir(parents=True)
    (roots / "runs" / "r1" / "iter_0" / "metrics.json").write_text(json.dumps(metrics.model_dump(mode="json")))
    launcher.finish(f"spin-{run_id}-iter0-try1", "SUCCEEDED")
    tick(app)
    run = api.get(f"/runs/{run_id}").json()
    assert run["state"] == "stopped" and [it["state"] for it in run["iterations"]] == ["succeeded", "skipped"]
    # Iteration 0's job left the generator serving model 1 for iteration 1, which will not run.
    assert launcher.released == ([] if keep_serving else [run_id])
