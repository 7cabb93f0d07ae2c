"""The versioned hand-off of weights from training to serving.

Iteration k samples from model version k (0 is the SFT model). `serve_model` makes the generator
application serve a given folder as a given version: it deploys the application when absent and
otherwise changes only its Serve `user_config`, which Serve applies by calling the running replicas'
`reconfigure` (no restart, no new engine). A replica that restarts later re-applies the same user_config,
so it comes back on the latest weights, not the first ones.
"""

from __future__ import annotations

import logging
import time

from services.generator.app import APP_NAME, DEPLOYMENT_NAME, build_generator_app
from services.generator.schemas import GeneratorArgs, GeneratorInfo, WeightsUpdate

logger = logging.getLogger("spin")


QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


def start_serve() -> None:
    """Start Serve for handle calls only: no HTTP proxy, quiet logs."""
    from ray import serve
    from ray.serve.config import ProxyLocation

    serve.start(proxy_location=ProxyLocation.Disabled, logging_config=QUIET_LOGS)


def generator_info(timeout_s: float = 60.0) -> GeneratorInfo | None:
    """What the running generator serves, or None when the application is not running."""
    from ray import serve

    if APP_NAME not in serve.status().applications:
        return None
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
    return handle.info.remote().result(timeout_s=timeout_s)


def serve_model(args: GeneratorArgs, model_dir: str, version: int, timeout_s: float = 900.0) -> float:
    """Make the generator serve `model_dir` as `version`; returns the seconds it took."""
    from ray import serve

    start = time.perf_counter()
    start_serve()
    current = generator_info()
    if current is None:
        app = build_generator_app(args.model_copy(update={"model_path": model_dir, "model_version": version}))
        serve.run(app, name=APP_NAME, route_prefix=None, logging_config=QUIET_LOGS)
    elif (current.model_path, current.model_version) != (model_dir, version):
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
        deployed: GeneratorArgs = handle.args.remote().result(timeout_s=60)
        update = WeightsUpdate(model_path=model_dir, model_version=version)
        serve.run(build_generator_app(deployed, update), name=APP_NAME, route_prefix=None, logging_config=QUIET_LOGS)
    _wait_for(model_dir, version, timeout_s)
    seconds = time.perf_counter() - start
    logger.info("generator serves version %d from %s (%.1fs)", version, model_dir, seconds)
    return seconds


def _wait_for(model_dir: str, version: int, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"the generator failed to deploy: {app.message}")
        if app is not None and app.status == "RUNNING":
            info = generator_info()
            if info is not None and (info.model_path, info.model_version) == (model_dir, version):
                return
        time.sleep(1.0)
    raise TimeoutError(f"the generator did not serve version {version} within {timeout_s:.0f}s")
