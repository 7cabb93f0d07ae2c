"""Fixtures of the integration tests: data with duplicates and bad rows, and one undisturbed iteration."""

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import SpinConfig
from jobs.demo.arithmetic import make_problems, write_jsonl
from tests.factories import tiny_run_config

UNIQUE = 56  # prompts in the data: 40 are trained on, 8 validate, 8 test
VALIDATION = TEST = 8
TRAIN = UNIQUE - VALIDATION - TEST
BAD_LINES = ['{"prompt": "What is 2 + 2?"}', '{"prompt": "Q", "response": 4}', '{"prompt": "Q", "response": ""}']


def tiny_config(tmp_path, model_dir, data_path, tracking=None, **data):
    return SpinConfig.model_validate(
        tiny_run_config(
            "it-test",
            str(tmp_path / "storage"),
            model_dir,
            str(data_path),
            **({"tracking": tracking} if tracking else {}),
            data={"validation_prompts": VALIDATION, "test_prompts": TEST, **data},
            # The paper's loss (no NLL term): the first step's loss is then exactly ln 2.
            train={"epochs": 4, "checkpoint_every_steps": 4, "real_nll_weight": 0.0},
            eval={"task": "answer_match", "max_new_tokens": 24, "every_steps": 8, "prompts_during_training": 8},
            prompts_per_iteration=64,
        )
    )


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """56 unique prompts over a JSONL and a Parquet file; 6 rows repeat earlier prompts; 3 rows are unusable."""
    root = tmp_path_factory.mktemp("data")
    problems = make_problems(UNIQUE, seed=21)
    write_jsonl(problems[:36], root / "a.jsonl")
    with (root / "a.jsonl").open("a") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    rows = [p.as_row() for p in problems[36:] + problems[:6]]
    pq.write_table(pa.Table.from_pylist([{**r, "messages": r["messages"]} for r in rows]), root / "b.parquet")
    return root, problems


class PrometheusScraper:
    """Scrapes the head's metrics endpoint every few seconds, as Prometheus would, keeping the samples of the
    series named `prefix...` that carry `label` (one run's)."""

    def __init__(
        self,
        label: str,
        url: str = "http://127.0.0.1:8080/metrics",
        every_s: float = 2.0,
        prefix: str = "ray_spin_",
    ):
        self.label, self.url, self.every_s, self.prefix = label, url, every_s, prefix
        self.samples: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def scrape(self) -> None:
        import httpx

        for line in httpx.get(self.url, timeout=10).text.splitlines():
            if line.startswith(self.prefix) and self.label in line:
                name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
                self.samples.setdefault(name, []).append(value)

    def _loop(self) -> None:
        import httpx

        while not self._stop.wait(self.every_s):
            try:
                self.scrape()
            except httpx.HTTPError:  # the agent may be briefly busy; the next scrape counts
                continue

    def __enter__(self) -> "PrometheusScraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="session")
def scraped(dataset):
    """What Prometheus scraped from the head while the `iteration` fixture ran."""
    return PrometheusScraper('run="it-test"')


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1: a SQLite backend, artifacts served from a local folder."""
    import subprocess
    import sys
    import time

    import httpx

    from services.control_plane.server import free_port

    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "art")]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError(f"the MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="session")
def iteration(ray_cluster, sft_model_dir, dataset, scraped, mlflow_server, tmp_path_factory):
    """One undisturbed iteration of the tiny model, tracked in MLflow: (config, its metrics.json, the problems)."""
    from jobs.iteration import run_iteration
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    root, problems = dataset
    tracking = {"backend": "mlflow", "uri": mlflow_server, "experiment": "it-test"}
    cfg = tiny_config(tmp_path_factory.mktemp("run"), sft_model_dir, root, tracking=tracking, bad_rows="skip")
    with scraped:
        metrics = run_iteration(cfg, 0)
    yield cfg, metrics, problems
    stop_serving(generator_app_name(cfg))
