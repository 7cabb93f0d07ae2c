"""The command line as a person meets it, against a real control plane on 127.0.0.1 (no Ray needed): a run found
by its name, every error one line naming what is wrong, a refused token naming where it came from."""

import os
import subprocess
import sys

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from tests.services.control_plane.launchers import RecordingLauncher
from tests.services.control_plane.test_api import AUTH, TOKEN, config, settings


@pytest.fixture
def server(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    app = create_app(settings(tmp_path), launcher=RecordingLauncher(), reconcile=False)
    with BackgroundServer(app) as running:
        httpx.post(f"{running.url}/runs", json={"config": config(tmp_path, name="named-run")}, headers=AUTH)
        yield running, tmp_path


def spin(server, *args, token=None, home=None):
    env = os.environ | {"SPIN_API_URL": server.url, "SPIN_HOME": str(home)}
    env.pop("SPIN_API_TOKEN", None)
    if token:
        env["SPIN_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, env=env, timeout=120)


def test_a_run_is_found_by_its_name(server):
    running, root = server
    done = spin(running, "runs", "get", "named-run", home=root / "home")
    assert done.returncode == 0 and "named-run" in done.stdout


def test_an_unknown_run_is_one_line_not_a_traceback(server):
    running, root = server
    done = spin(running, "report", "no-such-run", home=root / "home")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: no run with id or name 'no-such-run' on {running.url}"


def test_a_refused_token_says_where_it_came_from(server):
    running, root = server
    stale = spin(running, "runs", "delete", "named-run", token="stale-token", home=root / "home")
    assert stale.returncode == 1
    assert stale.stderr.strip().splitlines()[-1] == (
        "error: invalid bearer token; the token sent was from $SPIN_API_TOKEN"
    )
    (root / "home").mkdir()
    (root / "home" / "token").write_text("old-file-token")  # a token file of an earlier server, found from anywhere
    from_file = spin(running, "runs", "delete", "named-run", home=root / "home")
    assert f"the token sent was from {root / 'home' / 'token'}" in from_file.stderr.splitlines()[-1]
    ok = spin(running, "runs", "delete", "named-run", token=TOKEN, home=root / "home")
    assert ok.returncode == 0 and "deleted run" in ok.stdout
