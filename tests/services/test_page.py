"""The monitoring page in a real headless Chromium (Debian's), driven by Playwright."""

import shutil
import time

import httpx
import pytest

from services.control_plane.main import create_app
from services.control_plane.server import BackgroundServer
from tests.services.test_api import AUTH, config, settings

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


def test_page_lists_runs_and_follows_iteration_states_without_reload(browser, tmp_path, ray_head):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    with BackgroundServer(create_app(settings(tmp_path, ray_head, job_retries=0))) as server:
        api = httpx.Client(base_url=server.url, headers=AUTH)
        run = api.post("/runs", json={"config": config(tmp_path, name="page-run")}).json()
        page = browser.new_page()
        page.goto(server.url + "/")
        block = page.locator(f"#run-{run['id']}")
        block.wait_for(timeout=15_000)
        assert "page-run" in block.inner_text() and "created" in block.locator("[data-field=run-state]").inner_text()
        navigations = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        # The launched iteration's job fails (its model does not exist): the page must show each change.
        api.post(f"/runs/{run['id']}/launch", json={"iterations": 1})
        state = block.locator("tr[data-iteration='0'] [data-field=state]")
        state.wait_for(timeout=15_000)
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "failed" not in seen:
            seen.add(state.inner_text())
            time.sleep(0.2)
        assert "failed" in seen and seen & {"pending", "submitted", "running"}, seen
        assert page.locator(f"#run-{run['id']} [data-field=run-state]").inner_text() == "failed"
        assert navigations == []  # no reload happened
        assert "FileNotFoundError: model.path" in block.inner_text()
