"""A process that outlives a Serve restart within its Ray job still reaches the generator application: the generate
stage's caller tasks run in worker processes that Ray reuses, and Serve caches its controller's client and the
handles it gave out in each process."""

import pytest

pytestmark = [pytest.mark.ray]


def test_a_process_that_outlived_a_serve_restart_reaches_the_new_deployment(ray_cluster):
    import ray
    from ray import serve

    from services.generator.app import DEPLOYMENT_NAME
    from services.generator.client import QUIET_LOGS, generator_handle, start_serve

    @serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0})
    class Deployed:
        """Stands in for the generator's deployment: only its name and `info` are used by the handle under test."""

        def __init__(self, label: str):
            self.label = label

        def info(self) -> str:
            return self.label

    @ray.remote(num_cpus=0)
    class Caller:
        def ask(self, app: str) -> tuple[int, str]:
            import os

            return os.getpid(), generator_handle(app).info.remote().result(timeout_s=30)

    app = "serve-restart"
    start_serve()
    serve.run(Deployed.bind("first"), name=app, route_prefix=None, logging_config=QUIET_LOGS)
    caller = Caller.remote()
    try:
        pid, label = ray.get(caller.ask.remote(app), timeout=120)
        assert label == "first"
        serve.shutdown()  # what test_manifests_on_ray does between the runs of one session
        start_serve()
        serve.run(Deployed.bind("second"), name=app, route_prefix=None, logging_config=QUIET_LOGS)
        pid_after, label = ray.get(caller.ask.remote(app), timeout=120)
        assert pid_after == pid and label == "second"
    finally:
        ray.kill(caller)
        serve.delete(app)
