"""Starting or joining Ray with the project's settings, the same way in every process.

Every process of a run (the driver, Ray's workers, the Serve replica, a Jobs client) must agree on these
settings; the local defaults bind everything to 127.0.0.1 and talk to nothing outside.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# Quiet, offline and private by default; a value already in the environment wins.
COMMON_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # Ray Data reads Parquet footers on a pool of actors started for every read, 32 by default; a run's record
    # folders hold a few files, and starting 32 processes took ~5 s of each stage that reads them on 2 cores
    # (tests/bench: the score stage 14.6 → 8.8 s). One actor reads footers on 128 threads.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}

# A local single-machine cluster: Ray's "no cluster" mode puts the node and every listener on the
# loopback address (otherwise Ray binds the machine's network address). Token auth is off because nothing
# listens beyond 127.0.0.1; a shared cluster sets RAY_AUTH_MODE=token in every process instead.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_LOOPBACK_IP": "127.0.0.1",
}


def is_local() -> bool:
    """Whether this process talks to (or starts) a local loopback-only cluster."""
    return os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"


def apply_env(local: bool) -> dict[str, str]:
    """Set the project's environment in this process (keeping values already set); returns it."""
    env = {**COMMON_ENV, **(LOCAL_ENV if local else {})}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}


def vllm_env(use_gpu: bool) -> dict[str, str]:
    """Environment for a vLLM engine process."""
    env = {
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        # The weight hand-off sends a function to the engine process; both are ours, on one machine.
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    if not use_gpu:
        # One engine per machine here: let it use every core (the default binds one core and reserves
        # another for the scheduler, 1.6x slower on 2 cores), and run the engine core in-process.
        cores = os.cpu_count() or 1
        env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
        # Ray gives an actor with num_cpus=1 OMP_NUM_THREADS=1: tests/bench measured the replica at 0.58x the bare
        # engine's tokens/s so (bf16), 0.87x with every core (fp32). Generation and training never overlap.
        env["OMP_NUM_THREADS"] = str(cores)
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if is_local():
        env["VLLM_HOST_IP"] = env["VLLM_LOOPBACK_IP"] = "127.0.0.1"
    return env


# Serve's own default, 8000, is the control plane's port.
SERVE_PORT = 8001


def serve_http_options() -> dict[str, Any]:
    """Where Serve's HTTP proxy listens, on the head node only: the generators' OpenAI routes. 127.0.0.1:8001 unless
    RAY_SERVE_DEFAULT_HTTP_HOST (Ray's own switch; 0.0.0.0 in a pod) or SPIN_SERVE_PORT say otherwise."""
    return {
        "host": os.environ.get("RAY_SERVE_DEFAULT_HTTP_HOST", "127.0.0.1"),
        "port": int(os.environ.get("SPIN_SERVE_PORT", str(SERVE_PORT))),
    }


def connect(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    object_store_memory: int | None = None,
    include_dashboard: bool = False,
    log_to_driver: bool | None = None,
) -> dict[str, Any]:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS, as inside a Ray Job), else start a local one.

    Returns the cluster's resources. A local cluster listens on 127.0.0.1 only. Workers' output reaches
    this console only with `log_to_driver` (default: $SPIN_VERBOSE); it is always in Ray's log folder.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    env = apply_env(local=address is None or is_local())
    import ray
    from ray._private import ray_constants

    if is_local() and ray_constants.ENABLE_RAY_CLUSTER:
        # Ray reads this switch once, at import: set the environment before anything imports ray.
        raise RuntimeError("ray was imported before cluster.runtime.apply_env(local=True); call it first")
    if ray.is_initialized():
        return dict(ray.cluster_resources())
    runtime_env = {"env_vars": env}
    if log_to_driver is None:
        log_to_driver = os.environ.get("SPIN_VERBOSE", "0") not in ("", "0")
    if not address and _local_cluster_running():
        address = "auto"  # join the head already up (`spin server` starts one): it was sized when it started
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    else:
        ray.init(
            num_cpus=int(num_cpus) if num_cpus else None,
            object_store_memory=object_store_memory,
            include_dashboard=include_dashboard,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=log_to_driver,
        )
    quiet_libraries()
    return dict(ray.cluster_resources())


def _local_cluster_running() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def quiet_libraries() -> None:
    """Keep the driver's console for our progress: libraries speak up at WARNING and above."""
    for name in ("ray.data", "ray.train", "ray.serve", "ray.tune", "vllm", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Data warns on every dataset that the progress bars we turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def start_head(
    *,
    num_cpus: float | None = None,
    object_store_memory: int | None = None,
    port: int = 6379,
    dashboard_port: int = 8265,
    metrics_port: int = 8080,
    timeout_s: float = 120.0,
) -> str:
    """Start a local Ray head (GCS, dashboard with the Jobs API, all on 127.0.0.1) unless one answers on
    `dashboard_port`; returns the dashboard URL. Jobs submitted there run with this interpreter."""
    import shutil
    import subprocess
    import sys
    import time

    url = f"http://127.0.0.1:{dashboard_port}"

    def answering() -> bool:
        return head_running(dashboard_port)

    if answering():
        return url
    env = {**os.environ, **apply_env(local=True)}
    # Jobs call `python`: make it this environment's interpreter.
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    command = [
        ray_cli,
        "start",
        "--head",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={metrics_port}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={int(num_cpus)}")
    if object_store_memory is not None:
        command.append(f"--object-store-memory={object_store_memory}")
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    deadline = time.monotonic() + timeout_s
    while not answering():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray dashboard did not answer on {url} within {timeout_s:.0f}s")
        time.sleep(0.5)
    return url


def head_running(dashboard_port: int = 8265) -> bool:
    """Whether a Ray dashboard answers on 127.0.0.1:`dashboard_port`."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/version", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def stop_head() -> None:
    """Stop the Ray processes started on this machine (`ray stop`), and any vLLM engine they left behind."""
    import shutil
    import subprocess
    import sys

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True)
    kill_orphaned_engines()


def kill_orphaned_engines() -> list[int]:
    """Kill vLLM engine processes whose parent is gone: `ray stop --force` kills a replica, and the engine core
    it started lives on, re-parented to init (measured: ~0.9 GB each). Returns the pids killed."""
    import signal
    from pathlib import Path

    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if title.startswith(b"VLLM::") and ppid == 1:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except OSError:
                continue
    return killed
