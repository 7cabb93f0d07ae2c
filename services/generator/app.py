"""The generator's Serve application, built from typed arguments.

    serve run services.generator.app:build_generator_app model_path=/models/sft dtype=float32

or, in a Serve config / RayService `serveConfigV2`:

    applications:
      - name: spin-generator-myrun
        import_path: services.generator.app:build_generator_app
        args: {model_path: /models/sft, dtype: bfloat16, tensor_parallel_size: 1}

Serve's loader calls a builder with exactly one parameter and turns `args` into that parameter's pydantic class
only when the annotation is the class itself, so this module keeps its annotations unpostponed.
"""

import hashlib
import inspect
import json

from ray.serve import Application

from cluster.runtime import vllm_env
from services.generator.schemas import GeneratorArgs, WeightsUpdate

DEPLOYMENT_NAME = "SpinGenerator"


def build_generator_app(args: GeneratorArgs) -> Application:
    """The generator application serving `args.model_path` as version `args.model_version`."""
    return generator_app(args)


def generator_app(args: GeneratorArgs, weights: WeightsUpdate | None = None) -> Application:
    """The generator application. `weights`, when given, becomes the Serve user_config: changing only it moves
    running replicas to new weights in place (see services/generator/client.py)."""
    from services.generator.deployment import SpinGenerator

    env = {**vllm_env(use_gpu=args.num_gpus > 0), **args.env}
    options = {"user_config": weights.model_dump()} if weights else {}
    deployment = SpinGenerator.options(
        **options,
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": args.num_cpus,
            "num_gpus": args.num_gpus,
            "resources": args.resources,
            "runtime_env": {"env_vars": env},
        },
    )
    # `serve.run` replaces every replica unless the deployment has a version; with a stable one, a change
    # of user_config alone reaches the running replicas through `reconfigure`, as a config deploy would.
    # Ray 2.60 removed the public `version` option and reads this attribute (serve/_private/client.py);
    # tests/integration checks that a weight move keeps the same replica.
    deployment._version = code_version(args, env)
    return deployment.bind(args.model_dump())


def code_version(args: GeneratorArgs, env: dict[str, str]) -> str:
    """Changes with the deployment's code, arguments or environment, and with nothing else."""
    from services.generator import deployment

    digest = hashlib.sha256(inspect.getsource(deployment).encode())
    digest.update(json.dumps([args.model_dump(mode="json"), env], sort_keys=True).encode())
    return digest.hexdigest()[:16]
