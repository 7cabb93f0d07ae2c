"""The monitoring page in a real headless Chromium (Debian's), driven by Playwright."""

import shutil
import time

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from tests.services.control_plane.launchers import RecordingLauncher
from tests.services.control_plane.test_api import AUTH, config, settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_page_lists_runs_and_follows_iteration_states_without_reload(browser, tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    launcher = RecordingLauncher()
    app = create_app(settings(tmp_path, job_retries=0, poll_interval_s=0.2), launcher=launcher)
    with BackgroundServer(app) as server:
        api = httpx.Client(base_url=server.url, headers=AUTH)
        run = api.post("/runs", json={"config": config(tmp_path, name="page-run")}).json()
        page = browser.new_page()
        page.goto(server.url + "/")
        block = page.locator(f"#run-{run['id']}")
        block.wait_for(timeout=15_000)
        assert "page-run" in block.inner_text() and "created" in block.locator("[data-field=run-state]").inner_text()
        navigations = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        # The page must show each change the reconciler records, without a reload.
        api.post(f"/runs/{run['id']}/launch", json={"iterations": 1})
        state = block.locator("tr[data-iteration='0'] [data-field=state]")
        job = f"spin-{run['id']}-iter0-try1"
        seen = set()
        for cluster_says, shown in [("RUNNING", "running"), ("FAILED", "failed")]:
            _wait_until(lambda: launcher.status(job) is not None)
            launcher.finish(job, cluster_says, logs="ValueError: a bad config" if cluster_says == "FAILED" else "")
            _wait_until(lambda s=shown: seen.add(state.inner_text()) or s in seen)
        assert seen >= {"running", "failed"}, seen
        assert page.locator(f"#run-{run['id']} [data-field=run-state]").inner_text() == "failed"
        assert navigations == []  # no reload happened
        assert "ValueError: a bad config" in block.inner_text()


def _wait_until(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not show the change")
        time.sleep(0.1)
