"""A small Python client of the control plane's REST API.

client = SpinClient()                         # $SPIN_API_URL, token from $SPIN_API_TOKEN or the local token file
run = client.create_run(SpinConfig.from_yaml("jobs/configs/demo_cpu.yaml"))
client.launch(run["id"], iterations=2)
client.wait(run["id"])
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def spin_home() -> Path:
    """Where the control plane keeps its token and SQLite database, whatever folder it or the CLI runs in:
    $SPIN_HOME, else ~/.cache/spin."""
    return Path(os.environ.get("SPIN_HOME") or Path.home() / ".cache" / "spin")


def token_file() -> Path:
    return spin_home() / "token"


FINAL_RUN_STATES = {"idle", "completed", "stopped", "failed", "cancelled", "created"}


class SpinAPIError(RuntimeError):
    def __init__(self, status_code: int, detail: Any):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"HTTP {status_code}: {detail}")


def default_token() -> tuple[str | None, str]:
    """The token the CLI sends, and where it came from (said when the server refuses it)."""
    token = os.environ.get("SPIN_API_TOKEN")
    if token:
        return token, "$SPIN_API_TOKEN"
    path = token_file()
    if path.exists():
        return path.read_text().strip(), f"{path} (written by the last `spin server` started without SPIN_API_TOKEN)"
    return None, f"no token: neither $SPIN_API_TOKEN nor {path} is set"


class SpinClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0):
        self.url = (url or os.environ.get("SPIN_API_URL") or DEFAULT_URL).rstrip("/")
        token, self.token_source = (token, "the token given") if token is not None else default_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if response.status_code == 401:
                detail = f"{detail}; the token sent was from {self.token_source}"
            raise SpinAPIError(response.status_code, detail)
        return response.json() if response.content else None

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/healthz"))

    def create_run(self, config: Any) -> dict[str, Any]:
        body = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
        return dict(self._call("POST", "/runs", json={"config": body}))

    def list_runs(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._call("GET", "/runs", params={"offset": offset, "limit": limit}))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/runs/{run_id}"))

    def find_run(self, id_or_name: str) -> dict[str, Any]:
        """A run by its id, or else by its name (the newest of that name)."""
        try:
            return self.get_run(id_or_name)
        except SpinAPIError as e:
            if e.status_code != 404:
                raise
        named = [r for r in self.list_runs(limit=500)["data"] if r["name"] == id_or_name]
        if not named:
            raise SpinAPIError(404, f"no run with id or name {id_or_name!r} on {self.url}")
        return dict(named[0])

    def launch(self, run_id: str, iterations: int = 1) -> dict[str, Any]:
        return dict(self._call("POST", f"/runs/{run_id}/launch", json={"iterations": iterations}))

    def cancel(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/runs/{run_id}/cancel"))

    def delete(self, run_id: str) -> None:
        self._call("DELETE", f"/runs/{run_id}")

    def wait(
        self,
        run_id: str,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 2.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run has nothing queued or running; returns its final record."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get_run(run_id)
            if on_update:
                on_update(run)
            if run["state"] in FINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['state']} after {timeout_s:.0f}s")
            time.sleep(poll_s)
