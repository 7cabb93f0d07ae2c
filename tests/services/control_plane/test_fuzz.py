"""The API fuzzed from its own OpenAPI document (schemathesis), in-process, with the token: no request may get a
5xx, and every response must match the status codes and schema its route declares. Bounded: a fixed number of
cases per route, derandomized, no network. What it found is kept as regression tests in test_hostile.py."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from services.control_plane.main import create_app
from tests.services.control_plane.launchers import RecordingLauncher
from tests.services.control_plane.test_api import AUTH
from tests.services.control_plane.test_api import settings as api_settings

CASES_PER_ROUTE = 150


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    roots = tmp_path_factory.mktemp("fuzz")
    (roots / "inputs").mkdir()
    (roots / "runs").mkdir()
    app = create_app(api_settings(roots), launcher=RecordingLauncher(), reconcile=False)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


ROUTES = [
    ("POST", "/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/{run_id}"),
    ("GET", "/runs/{run_id}/iterations"),
    ("GET", "/runs/{run_id}/iterations/{index}"),
    ("GET", "/runs/{run_id}/report"),
    ("POST", "/runs/{run_id}/launch"),
    ("POST", "/runs/{run_id}/cancel"),
    ("DELETE", "/runs/{run_id}"),
    ("GET", "/runs/{run_id}/plots/{name}.png"),
    ("GET", "/healthz"),
    ("GET", "/runs/{run_id}/v1/models"),
    ("POST", "/runs/{run_id}/v1/completions"),
    ("POST", "/runs/{run_id}/v1/chat/completions"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_request_gets_a_server_error_or_an_undeclared_answer(schema, method, path):
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=CASES_PER_ROUTE, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(
            headers=AUTH, checks=[not_a_server_error, response_schema_conformance, status_code_conformance]
        )

    fuzz()


def test_every_route_is_fuzzed(schema):
    declared = {(method.upper(), path) for path, item in schema.raw_schema["paths"].items() for method in item}
    assert declared == set(ROUTES)
