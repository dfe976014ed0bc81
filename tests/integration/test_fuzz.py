"""Schema-driven fuzzing: schemathesis sends what the OpenAPI document describes (and
variations of it) to a real sidecar in front of the real ComfyUI. No answer may be a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import start_sidecar
from tests.support.faulty_proxy import FaultyProxy


@pytest.fixture(scope="module")
def fuzz_target(comfy, tmp_path_factory):
    proxy = FaultyProxy("127.0.0.1", comfy.port)
    process = start_sidecar(
        tmp_path_factory.mktemp("fuzz"), comfy, proxy.port, RATE_LIMIT="", RATE_LIMIT_GENERATE=""
    )
    yield process
    process.stop()
    proxy.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_target):
    return schemathesis.openapi.from_url(f"{fuzz_target.url}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_input_makes_a_server_error(case, fuzz_target):
    if case.path.endswith("/events"):
        case.path_parameters = {"job_id": "does-not-exist"}  # a live stream never ends
    response = case.call(base_url=fuzz_target.url, timeout=90)
    case.validate_response(response, checks=[not_a_server_error])
