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


def tiny_config(tmp_path, model_dir, data_path, **data):
    return SpinConfig.model_validate(
        tiny_run_config(
            "it-test",
            str(tmp_path / "storage"),
            model_dir,
            str(data_path),
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
    """Scrapes the head's metrics endpoint every few seconds, as Prometheus would, keeping one run's samples."""

    def __init__(self, run: str, url: str = "http://127.0.0.1:8080/metrics", every_s: float = 2.0):
        self.run, self.url, self.every_s = run, url, every_s
        self.samples: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def scrape(self) -> None:
        import httpx

        for line in httpx.get(self.url, timeout=10).text.splitlines():
            if line.startswith("ray_spin_") and f'run="{self.run}"' in line:
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
    return PrometheusScraper("it-test")


@pytest.fixture(scope="session")
def iteration(ray_cluster, sft_model_dir, dataset, scraped, tmp_path_factory):
    """One undisturbed iteration of the tiny model: (config, its metrics.json, the problems)."""
    from jobs.iteration import run_iteration
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    root, problems = dataset
    cfg = tiny_config(tmp_path_factory.mktemp("run"), sft_model_dir, root, bad_rows="skip")
    with scraped:
        metrics = run_iteration(cfg, 0)
    yield cfg, metrics, problems
    stop_serving(generator_app_name(cfg))
