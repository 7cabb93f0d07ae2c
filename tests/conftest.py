"""Shared fixtures. The environment is set before anything imports ray: a local cluster on 127.0.0.1."""

from cluster.runtime import apply_env

apply_env(local=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built tiny Llama and tokenizer (random weights), shared by the session."""
    from jobs.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
