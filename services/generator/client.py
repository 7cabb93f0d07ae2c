"""The generator application's lifecycle, from any Ray driver: deploy it, move it to new weights, ask it, stop it.

Iteration k samples from model version k (0 is the SFT model). `serve_model` makes the generator
application serve a given folder as a given version: it deploys the application when absent and
otherwise changes only its Serve `user_config`, which Serve applies by calling the running replicas'
`reconfigure` (no restart, no new engine). A replica that restarts later re-applies the same user_config,
so it comes back on the latest weights, not the first ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cluster.runtime import serve_http_options
from services.generator.app import DEPLOYMENT_NAME, generator_app
from services.generator.schemas import GenerateRequest, GenerateResponse, GeneratorArgs, GeneratorInfo, WeightsUpdate

logger = logging.getLogger("spin")

QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}
# A request whose replica dies with it (its node lost) is sent again: Serve holds it until a replica is back, and
# seeded requests get the answers the lost replica would have given.
REPLICA_LOSS_RETRIES = 3


def start_serve() -> None:
    """Start Serve with one HTTP proxy, on the head node (the generators' OpenAI routes), and quiet logs."""
    from ray import serve
    from ray.serve.config import ProxyLocation

    serve.start(proxy_location=ProxyLocation.HeadOnly, http_options=serve_http_options(), logging_config=QUIET_LOGS)


def route_prefix(app_name: str) -> str:
    """Where an application's HTTP routes live on the proxy: `/<app>/v1/completions`, ..."""
    return f"/{app_name}"


def generator_handle(app_name: str) -> Any:
    from ray import serve
    from ray.serve import context

    # Serve keeps one client of its controller per process, and the handles it gave out. A process that outlives a
    # Serve restart within its job (serve.shutdown, then serve.start: the generate stage's caller tasks run in worker
    # processes Ray reuses) would keep both, bound to a controller that is gone. Serve's public API has no call that
    # checks them, so this one does (one call to the controller) and drops them when the controller is gone.
    context._check_cached_client_alive()
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


def generate(handle: Any, request: GenerateRequest, timeout_s: float, sent: Any = None) -> GenerateResponse:
    """The generator's response to `request` (already `sent`, or sent now), sent again if its replica is lost."""
    from ray.exceptions import RayActorError

    response = sent if sent is not None else handle.generate.remote(request)
    for retry in range(REPLICA_LOSS_RETRIES + 1):
        try:
            result: GenerateResponse = response.result(timeout_s=timeout_s)
            return result
        except RayActorError as e:
            if retry == REPLICA_LOSS_RETRIES:
                raise
            logger.warning("generator replica lost (%s); sending the request again", type(e).__name__)
            response = handle.generate.remote(request)
    raise AssertionError("unreachable")


def generator_info(app_name: str, timeout_s: float = 60.0) -> GeneratorInfo | None:
    """What the application's generator serves, or None when the application is not running."""
    from ray import serve

    if app_name not in serve.status().applications:
        return None
    info: GeneratorInfo = generator_handle(app_name).info.remote().result(timeout_s=timeout_s)
    return info


def serve_model(
    args: GeneratorArgs,
    app_name: str,
    model_dir: str,
    version: int,
    *,
    best: bool = False,
    timeout_s: float = 900.0,
) -> float:
    """Make the generator application `app_name` serve `model_dir` as `version` (`best`: the run's best model so
    far, which its OpenAI routes then also answer to as `<name>:best`); returns the seconds it took."""
    from ray import serve

    start = time.perf_counter()
    start_serve()
    update = WeightsUpdate(model_path=model_dir, model_version=version, best=best)
    current = generator_info(app_name)
    if current is None:
        app = generator_app(args.model_copy(update={"model_path": model_dir, "model_version": version}), update)
        serve.run(app, name=app_name, route_prefix=route_prefix(app_name), logging_config=QUIET_LOGS)
    elif _served(current) != update:
        deployed: GeneratorArgs = generator_handle(app_name).args.remote().result(timeout_s=60)
        serve.run(
            generator_app(deployed, update),
            name=app_name,
            route_prefix=route_prefix(app_name),
            logging_config=QUIET_LOGS,
        )
    _wait_for(app_name, update, timeout_s)
    seconds = time.perf_counter() - start
    logger.info("generator serves version %d from %s (%.1fs)", version, model_dir, seconds)
    return seconds


def stop_serving(app_name: str) -> None:
    """Delete the generator application, freeing its CPUs or GPUs."""
    from ray import serve

    if app_name in serve.status().applications:
        serve.delete(app_name)


def _served(info: GeneratorInfo) -> WeightsUpdate:
    return WeightsUpdate(model_path=info.model_path, model_version=info.model_version, best=info.best)


def _wait_for(app_name: str, update: WeightsUpdate, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"the generator failed to deploy: {app.message}")
        if app is not None and app.status == "RUNNING":
            info = generator_info(app_name)
            if info is not None and _served(info) == update:
                return
        time.sleep(1.0)
    raise TimeoutError(f"the generator did not serve version {update.model_version} within {timeout_s:.0f}s")
