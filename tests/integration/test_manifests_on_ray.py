"""The k8s manifests' Ray parts run on a local Ray through the paths KubeRay drives: a RayService's serveConfigV2
is PUT to the dashboard's Serve REST API (as the operator does) and answers over HTTP; a RayJob's entrypoint and
runtimeEnvYAML are submitted through the Jobs API (as its submitter does) and reach the state the manifest
expects. Only the sizing a laptop cannot meet is changed: the model, its dtype, GPUs and replica count."""

import shlex
import time
from pathlib import Path

import httpx
import pytest
import yaml

from jobs.demo.arithmetic import make_problems, write_jsonl
from jobs.storage import RunStorage
from services.control_plane.server import free_port
from tests.factories import tiny_run_config
from tests.k8s.kustomize import render

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
K8S = Path(__file__).parents[2] / "k8s"


def manifest(folder: str, kind: str) -> dict:
    return next(o for o in render(K8S / folder) if o["kind"] == kind)


def wait_for(what: str, probe, timeout_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f}s")


def serve_config_for_this_machine(model_dir: str, port: int) -> tuple[dict, dict]:
    """The RayService's serveConfigV2, with its model and GPUs swapped for the tiny model on CPU."""
    config = yaml.safe_load(manifest("serving", "RayService")["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    sizing = {"model_path": model_dir, "dtype": "float32", "num_gpus": 0, "num_cpus": 1, "num_replicas": 1}
    assert set(sizing) <= set(app["args"]), "the test may only re-size what the manifest sets"
    app["args"] |= sizing | {"max_model_len": 256, "kv_cache_memory_bytes": 64 * 2**20}
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config, app


def test_the_rayservice_serve_config_deploys_through_the_dashboard_and_generates_over_http(
    ray_cluster, ray_head, tiny_model_dir
):
    from ray import serve
    from transformers import AutoTokenizer

    serve.shutdown()  # the runs' generators start Serve on their own port (8001); this config brings its own options
    config, app = serve_config_for_this_machine(tiny_model_dir, free_port())
    applications = f"{ray_head}/api/serve/applications/"
    try:
        httpx.put(applications, json=config, timeout=60).raise_for_status()

        def running():
            details = httpx.get(applications, timeout=30).json()["applications"].get(app["name"], {})
            assert details.get("status") != "DEPLOY_FAILED", details.get("message")
            return details.get("status") == "RUNNING"

        wait_for(f"application {app['name']} RUNNING", running, timeout_s=300)
        base = f"http://127.0.0.1:{config['http_options']['port']}{app['route_prefix'].rstrip('/')}"
        prompt = AutoTokenizer.from_pretrained(tiny_model_dir)("What is 2 + 3?")["input_ids"]
        body = {"prompt_token_ids": [prompt, prompt], "max_tokens": [6, 6], "temperature": 0.0}
        response = httpx.post(f"{base}/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        generated = response.json()
        assert generated["model_version"] == app["args"]["model_version"]
        first, second = generated["completions"]
        assert first["token_ids"] and first["token_ids"] == second["token_ids"]  # greedy: the same answer twice
        info = httpx.get(f"{base}/info", timeout=30).json()
        assert (info["model_path"], info["model_version"]) == (tiny_model_dir, app["args"]["model_version"])
        assert httpx.post(f"{base}/generate", json={"prompt_token_ids": []}, timeout=30).status_code == 422
    finally:
        serve.shutdown()


def test_the_rayjob_entrypoint_runs_a_whole_run_through_the_jobs_api(ray_cluster, ray_head, sft_model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    job = manifest("rayjob", "RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:4] == ["python", "-m", "jobs", "run"] and argv[4].endswith(".yaml")
    write_jsonl(make_problems(120, seed=41), tmp_path / "train.jsonl")
    storage = tmp_path / "run"
    run_config = tiny_run_config(
        "rayjob", str(storage), sft_model_dir, str(tmp_path / "train.jsonl"), prompts_per_iteration=16
    )
    (tmp_path / "run-config.yaml").write_text(yaml.safe_dump(run_config))
    entrypoint = shlex.join([*argv[:4], str(tmp_path / "run-config.yaml"), *argv[5:]])
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])

    client = JobSubmissionClient(ray_head)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = wait_for("a terminal job state", lambda: (s := client.get_job_status(job_id)) in terminal and s, 900, 2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
    assert client.get_job_info(job_id).runtime_env["env_vars"] == runtime_env["env_vars"]
    run = RunStorage(str(storage))
    assert run.is_complete(run.model(0)) and run.read_json(run.metrics(0))["iteration"] == 0
