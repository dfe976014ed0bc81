"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI document (valid and
not) and sends them to a real sidecar in front of the real ComfyUI, once with a key of each
scope (read, generate, admin). No answer may be a 5xx, and every answer must be one the
document lists, of its media type, with a body its schema allows."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import start_sidecar
from tests.support.faulty_proxy import FaultyProxy

EXAMPLES_PER_OPERATION = 25
KEYS = {
    "read": "fuzz-read-key-0123456789",
    "generate": "fuzz-generate-key-0123456789",
    "admin": "fuzz-admin-key-0123456789",
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_target(comfy, tmp_path_factory):
    proxy = FaultyProxy("127.0.0.1", comfy.port)
    process = start_sidecar(
        tmp_path_factory.mktemp("fuzz"),
        comfy,
        proxy.port,
        API_KEYS=", ".join(f"{scope}:{key}:{scope}" for scope, key in KEYS.items()),
        # Whatever keys schemathesis makes up must not lock the real ones out.
        AUTH_FAILURE_LIMIT="",
        RATE_LIMIT="",
        RATE_LIMIT_GENERATE="",
    )
    yield process
    process.stop()
    proxy.stop()


@pytest.mark.parametrize("scope", list(KEYS))
def test_no_input_makes_a_server_error(fuzz_target, scope):
    schema = schemathesis.openapi.from_url(f"{fuzz_target.url}/api/openapi.json")
    headers = {"Authorization": f"Bearer {KEYS[scope]}"}
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            nonlocal tried
            if case.path.endswith("/events"):
                case.path_parameters = {"job_id": "does-not-exist"}  # a live stream never ends
            response = case.call(base_url=fuzz_target.url, timeout=90, headers=headers)
            tried += 1
            case.validate_response(response, checks=CHECKS)

        run()
    assert tried >= 10 * len(list(schema.get_all_operations()))
    print(f"\nfuzz ({scope} key): {tried} requests, none answered 5xx or off the document")
