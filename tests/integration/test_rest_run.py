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
ANSWER_TOKENS = 24  # the run's sampling.max_new_tokens


def run_config(root, sft_model_dir, name, iterations=2, **overrides):
    return tiny_run_config(
        name,
        str(root / "runs" / name),
        sft_model_dir,
        str(root / "inputs" / "train.jsonl"),
        iterations=[{}] * iterations,
        **overrides,
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
        run = client.create_run(run_config(root, sft_model_dir, "rest", generator={"keep_serving": True}))
        client.launch(run["id"], iterations=2)
        running = wait_until(client, run["id"], lambda r: r["iterations"][0]["stage"] in ("score", "train"), 600)
        job_id = running["iterations"][0]["job_id"]

        server.send_signal(signal.SIGKILL)  # no shutdown, no last write
        server.wait(timeout=30)
        assert JobSubmissionClient(ray_head).get_job_status(job_id).value in ("RUNNING", "SUCCEEDED")

        server, client = start_server(env, port)
        final = wait_until(client, run["id"], lambda r: r["state"] not in ("running",), 1500)
        assert final["state"] == "completed", final
        # The finished run keeps serving its last model (generator.keep_serving) to OpenAI clients and harnesses.
        check_openai_clients(f"http://127.0.0.1:{port}/runs/{run['id']}/v1", final, root)
        client.delete(run["id"])  # ... until the run is deleted
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
    # Deleting the run released its generator.
    app, deadline = generator_app_name(SpinConfig.model_validate(final["config"])), time.monotonic() + 120
    while app in serve.status().applications and time.monotonic() < deadline:
        time.sleep(1)
    assert app not in serve.status().applications


def check_openai_clients(base_url, run, root):
    """The real `openai` client and lm-evaluation-harness against the run's model, through the control plane."""
    import openai

    from jobs.chat import encode_prompt
    from jobs.config import SpinConfig
    from jobs.hf import load_tokenizer
    from jobs.iteration.evaluate import greedy_answers
    from jobs.spin.metrics import answer_match
    from services.generator.client import generator_handle, serve_model
    from tests.integration.harness import run_harness, write_task

    cfg = SpinConfig.model_validate(run["config"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=120)
    # Two iterations published models 1 and 2; the generator serves the last, iteration 1's.
    assert [m.id for m in client.models.list().data] == ["rest:iter1", "rest"]
    problems = make_problems(12, seed=404)  # not among the run's prompts (seed 31)
    chat = client.chat.completions.create(
        model="rest",
        messages=[{"role": "user", "content": problems[0].question}],
        max_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert chat.model == "rest:iter1" and chat.choices[0].finish_reason in ("stop", "length")
    completion = client.completions.create(model="rest:iter1", prompt=problems[0].question, max_tokens=4)
    assert completion.model == "rest:iter1" and completion.usage.completion_tokens <= 4
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="rest:iter0", prompt="1 + 1", max_tokens=2)  # no longer served

    # The project's own task metric on the same problems: its chat template, greedy, through the Serve handle.
    storage = RunStorage(run["storage_uri"])
    tok = load_tokenizer(storage.uri_of(storage.model(1)))
    prompts = [encode_prompt(tok, [{"role": "user", "content": p.question}]) for p in problems]
    ours = greedy_answers(cfg.generator_app, prompts, ANSWER_TOKENS, version=2, timeout_s=120)
    score, counted = answer_match([c.text for c in ours], [p.solution for p in problems], cfg.eval.answer_pattern)
    assert counted == len(problems) and chat.choices[0].message.content == ours[0].text

    task = write_task(root / "lm_eval_task", problems, cfg.eval.answer_pattern, ANSWER_TOKENS)
    harness = run_harness(task, base_url, "rest", TOKEN, root / "lm_eval_out", timeout_s=600)
    assert harness == pytest.approx(score), (harness, score, [c.text for c in ours])

    # Streamed, the same answer; a stream dropped after its first chunk leaves nothing in flight, so the generator
    # still moves to other weights (a move waits for every request it serves).
    question = [{"role": "user", "content": problems[1].question}]
    streamed = client.chat.completions.create(
        model="rest", messages=question, max_tokens=ANSWER_TOKENS, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == ours[1].text
    dropped = client.chat.completions.create(
        model="rest", messages=question, max_tokens=ANSWER_TOKENS, temperature=0, stream=True
    )
    assert next(iter(dropped)).model == "rest:iter1"
    dropped.close()
    deployed = generator_handle(cfg.generator_app).args.remote().result(timeout_s=60)
    serve_model(deployed, cfg.generator_app, storage.uri_of(storage.model(0)), version=1, timeout_s=120)
    assert [m.id for m in client.models.list().data] == ["rest:iter0", "rest"]


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
