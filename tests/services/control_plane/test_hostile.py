"""What a hostile or careless client tried, against a real uvicorn server on 127.0.0.1, a real SQLite file and a
real storage root in a temporary folder: nothing may be written outside the root, no two runs share a folder,
no run takes another's outputs, and bad values are refused at the door."""

import json

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from tests.services.control_plane.launchers import RecordingLauncher
from tests.services.control_plane.test_api import AUTH, config, settings


@pytest.fixture
def roots(tmp_path):
    for name in ("inputs", "runs", "outside"):
        (tmp_path / name).mkdir()
    (tmp_path / "inputs" / "d.jsonl").write_text('{"prompt": "Q", "response": "A"}\n')
    return tmp_path


@pytest.fixture
def api(roots):
    app = create_app(settings(roots), launcher=RecordingLauncher(), reconcile=False)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        yield client


def written_outside(roots):
    allowed = {roots / "runs", roots / "inputs", roots / "state.db"}
    return sorted(
        str(p)
        for p in roots.rglob("*")
        if not any(p == a or a in p.parents for a in allowed)
        and p.name not in ("state.db-wal", "state.db-shm")
        and p != roots / "outside"
    )


def test_a_uri_looking_path_cannot_escape_the_roots(api, roots):
    escape = f"{roots}/runs/../outside/x://y"
    r = api.post("/runs", json={"config": config(roots) | {"storage_uri": escape}})
    assert r.status_code == 403 and r.json()["detail"].startswith("storage_uri")
    data = f"{roots}/inputs/../outside/x://y/d.jsonl"
    r = api.post("/runs", json={"config": config(roots, storage="runs/d") | {"data": {"path": data}}})
    assert r.status_code == 403 and r.json()["detail"].startswith("data.path")
    assert written_outside(roots) == [] and not any((roots / "outside").iterdir())


@pytest.mark.parametrize("second", ["runs/a/../a", "runs/a/iter_0", "runs/a/", "runs"])
def test_two_runs_never_share_or_nest_their_folders(api, roots, second):
    assert api.post("/runs", json={"config": config(roots, storage="runs/a")}).status_code == 201
    r = api.post("/runs", json={"config": config(roots, name="second", storage=second)})
    assert r.status_code == 409 and "give this run its own storage_uri" in r.json()["detail"]
    assert json.loads((roots / "runs" / "a" / "run.json").read_text())["run"] != "second"


def test_a_new_run_never_takes_a_deleted_runs_outputs(api, roots):
    first = api.post("/runs", json={"config": config(roots, storage="runs/a")}).json()
    (roots / "runs" / "a" / "iter_0").mkdir()  # what its iterations left
    assert api.delete(f"/runs/{first['id']}").status_code == 204
    other = config(roots, name="other", storage="runs/a") | {"train": config(roots)["train"] | {"beta": 0.9}}
    r = api.post("/runs", json={"config": other})
    assert r.status_code == 409, r.json()
    detail = r.json()["detail"]
    assert f"holds the outputs of run '{first['id']}'" in detail and "choose a fresh storage_uri" in detail
    assert "beta: 0.9" not in (roots / "runs" / "a" / "config.yaml").read_text()  # the first run's config stands


@pytest.mark.parametrize(
    ("section", "field", "raw"),
    [
        ("train", "beta", "1e999"),
        ("sampling", "temperature", "Infinity"),
        ("guard", "threshold", "NaN"),
        ("train", "epochs", "true"),
    ],
)
def test_non_finite_or_mistyped_values_are_refused_naming_the_field(api, roots, section, field, raw):
    body = config(roots)
    target = body["train"].setdefault("guard", {}) if section == "guard" else body.setdefault(section, {})
    target[field] = "__value__"
    text = json.dumps({"config": body}).replace('"__value__"', raw)  # JSON that json.dumps would refuse to write
    r = api.post("/runs", content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.json()
    assert [e["loc"][-1] for e in r.json()["detail"]] == [field]
    assert api.get("/runs").json()["count"] == 0


def test_launch_takes_a_number_not_true_and_paging_is_bounded(api, roots):
    run_id = api.post("/runs", json={"config": config(roots)}).json()["id"]
    assert api.post(f"/runs/{run_id}/launch", json={"iterations": True}).status_code == 422
    assert api.get("/runs", params={"offset": "9" * 20}).status_code == 422
    assert api.get("/runs/~unknownuser").status_code == 404
    r = api.post("/runs", json={"config": config(roots, storage="~unknownuser/x")})
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("pattern", "message"), [("The answer is (", "is not a regular expression"), ("answer", "has no group")]
)
def test_an_answer_pattern_that_can_only_fail_later_fails_now(api, roots, pattern, message):
    body = config(roots) | {"eval": {"answer_pattern": pattern}}
    r = api.post("/runs", json={"config": body})
    assert r.status_code == 422 and message in json.dumps(r.json()["detail"])
