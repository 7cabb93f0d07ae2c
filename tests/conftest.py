"""Shared fixtures. The environment is set before anything imports ray: a local cluster on 127.0.0.1."""

from cluster.runtime import apply_env

apply_env(local=True)

import pytest  # noqa: E402

from cluster.runtime import connect, start_head, stop_head  # noqa: E402

RAY_FIXTURES = {"ray_head", "ray_cluster", "iteration"}


def pytest_collection_modifyitems(items):
    """A test that uses a Ray fixture is a `ray` test, so `-m "not ray"` (make test-core) leaves it out."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built tiny Llama and tokenizer (random weights), shared by the session."""
    from jobs.demo.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def ray_head():
    """`ray start --head` on 127.0.0.1 with the dashboard (Jobs API); yields the dashboard URL."""
    stop_head()
    yield start_head(num_cpus=4, object_store_memory=512 * 2**20)
    stop_head()


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process as a driver of the local cluster."""
    import ray
    from ray import serve

    resources = connect("127.0.0.1:6379")
    yield resources
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def sft_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model after a short SFT on arithmetic problems: it answers in the task's format, so greedy
    outputs are varied text rather than one repeated token."""
    from jobs.baseline.sft import sft
    from jobs.demo.arithmetic import make_problems

    examples = [([{"role": "user", "content": p.question}], p.solution) for p in make_problems(1000, seed=11)]
    out = tmp_path_factory.mktemp("sft") / "model"
    sft(tiny_model_dir, out, examples, steps=200, batch_size=32, learning_rate=2e-3)
    return str(out)
