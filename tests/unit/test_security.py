"""API keys and scopes on every endpoint, rate limits, CORS, and where the sidecar listens."""

import pytest

from api import create_app
from api.auth import parse_keys
from api.config import Config, ConfigError
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

READ_KEY = "read-key-0123456789"
GEN_KEY = "generate-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
METRICS_KEY = "metrics-key-0123456789"

# Every endpoint and the scope it needs. A new endpoint missing here fails
# test_every_endpoint_is_in_the_table, so none is added without deciding.
EXPECTED = {
    ("GET", "/health"): "public",
    ("GET", "/api/health"): "public",
    ("POST", "/api/generate"): "generate",
    ("GET", "/api/status/<job_id>"): "read",
    ("GET", "/api/status/<job_id>/events"): "read",
    ("GET", "/api/status"): "read",
    ("GET", "/api/image/<path:filename>"): "read",
    ("POST", "/api/save/<job_id>"): "generate",
    ("GET", "/api/queue"): "read",
    ("DELETE", "/api/queue/<job_id>"): "generate",
    ("POST", "/api/queue/clear"): "generate",
    ("GET", "/api/outputs"): "read",
    ("GET", "/api/history"): "read",
    ("GET", "/api/jobs"): "read",
    ("GET", "/api/workflows"): "read",
    ("GET", "/api/workflows/<name>"): "read",
    ("GET", "/api/system"): "read",
    ("GET", "/api/nodes"): "admin",
    ("POST", "/api/upload"): "generate",
    ("POST", "/api/workflows/execute"): "admin",
    ("GET", "/api/openapi.json"): "public",
    ("GET", "/api/docs"): "public",
    ("GET", "/api/docs/init.js"): "public",
    ("GET", "/api/docs/<any('swagger-ui.css', 'swagger-ui-bundle.js'):asset>"): "public",
    ("GET", "/ws/progress/<job_id>"): "read",
    ("GET", "/"): "public",
    ("GET", "/ui/"): "public",
    ("GET", "/ui"): "public",
    ("GET", "/static/<path:filename>"): "public",
    ("GET", "/ui/static/<path:filename>"): "public",
    ("GET", "/api/jobs/<job_id>/deliveries"): "read",
    ("POST", "/api/jobs/<job_id>/redeliver"): "admin",
    ("POST", "/api/batch"): "generate",
    ("GET", "/api/batch/<batch_id>"): "read",
    ("GET", "/api/batch/<batch_id>/archive"): "read",
    ("DELETE", "/api/batch/<batch_id>"): "generate",
    ("GET", "/metrics"): "metrics",
}


def allows(scope: str, needed: str) -> bool:
    """The ladder read < generate < admin, and metrics beside it: only metrics and admin keys
    read /metrics, and a metrics key reads nothing else."""
    if needed == "metrics":
        return scope in ("metrics", "admin")
    ladder = ("read", "generate", "admin")
    return scope in ladder and ladder.index(scope) >= ladder.index(needed)


@pytest.fixture
def secured(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(
        tmp_path,
        workflows_dir,
        api_keys=f"{READ_KEY}:read, {GEN_KEY}:generate\n{ADMIN_KEY},{METRICS_KEY}:metrics",
        raw_graphs_enabled=True,
    )
    return create_app(config)


def routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            yield method, rule.rule


def test_every_endpoint_is_in_the_table(secured):
    assert set(routes(secured)) == set(EXPECTED)


@pytest.mark.parametrize(("method", "rule"), sorted(EXPECTED))
def test_scopes_per_endpoint(secured, method, rule):
    client = secured.test_client()
    path = (
        rule.replace("<job_id>", "nope")
        .replace("<path:filename>", "x.png")
        .replace("<name>", "nope")
        .replace("<batch_id>", "nope")
    )
    needed = EXPECTED[(method, rule)]

    def call(headers):
        return client.open(path, method=method, headers=headers, json={})

    anonymous = call({})
    if needed == "public":
        assert anonymous.status_code not in (401, 403)
        return
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in anonymous.get_json()["error"]
    assert call({"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
    keys = ((READ_KEY, "read"), (GEN_KEY, "generate"), (ADMIN_KEY, "admin"))
    for key, scope in (*keys, (METRICS_KEY, "metrics")):
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            status = call(headers).status_code
            if allows(scope, needed):
                assert status not in (401, 403), (key, path)
            else:
                assert status == 403, (key, path)


def test_rate_limit_headers_and_429(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    app = create_app(make_config(tmp_path, workflows_dir, api_keys=READ_KEY, rate_limit="3/minute"))
    client = app.test_client()
    headers = {"X-API-Key": READ_KEY}
    answers = [client.get("/api/jobs", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    assert answers[0].headers["X-RateLimit-Remaining"] == "2"
    assert "Retry-After" not in answers[0].headers
    limited = answers[3]
    assert int(limited.headers["Retry-After"]) > 0
    assert isinstance(limited.get_json()["error"], str)
    # Health probes are never limited.
    assert client.get("/health").status_code == 200


def test_cors_only_for_configured_origins(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    closed = create_app(make_config(tmp_path, workflows_dir)).test_client()
    response = closed.get("/api/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers

    opened = create_app(
        make_config(tmp_path / "b", workflows_dir, cors_origins="https://app.example")
    ).test_client()
    good = opened.get("/api/jobs", headers={"Origin": "https://app.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "https://app.example"
    bad = opened.get("/api/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_without_keys_it_listens_on_loopback_unless_told():
    assert Config.from_env({}).bind_host == "127.0.0.1"
    assert Config.from_env({"ALLOW_UNAUTHENTICATED": "true"}).bind_host == "0.0.0.0"
    assert Config.from_env({"API_KEYS": ADMIN_KEY}).bind_host == "0.0.0.0"
    assert Config.from_env({"API_KEYS": ADMIN_KEY, "API_HOST": "10.0.0.5"}).bind_host == (
        "10.0.0.5"
    )


@pytest.mark.parametrize(
    ("api_host", "said"),
    [
        ("0.0.0.0", "listens on 127.0.0.1 only (not 0.0.0.0)"),
        ("127.0.0.1", "answers only callers on this machine (API_HOST 127.0.0.1)"),
        ("localhost", "answers only callers on this machine (API_HOST localhost)"),
    ],
)
def test_without_keys_the_start_says_who_is_answered(
    tmp_path, workflows_dir, fake_comfy, caplog, api_host, said
):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    with caplog.at_level("WARNING", logger="api"):
        create_app(make_config(tmp_path, workflows_dir, api_host=api_host))
    open_api = [r.getMessage() for r in caplog.records if "no API_KEYS" in r.getMessage()]
    assert len(open_api) == 1 and said in open_api[0], open_api
    assert "(not 127.0.0.1)" not in open_api[0]  # where it listens, as if it were elsewhere


@pytest.mark.parametrize(
    "keys",
    [
        "short:admin",
        f"{ADMIN_KEY}:root",
        f"alice:{ADMIN_KEY}",  # a named key needs its scope
        f"al/ice:{ADMIN_KEY}:read",
        f"a:b:{ADMIN_KEY}:read",
        f"alice:{READ_KEY}:read, alice:{GEN_KEY}:generate",
        f"{READ_KEY}:read, other:{READ_KEY}:admin",
    ],
)
def test_bad_keys_stop_the_start_without_showing_the_key(tmp_path, workflows_dir, keys):
    with pytest.raises(ConfigError, match="API_KEYS") as raised:
        create_app(make_config(tmp_path, workflows_dir, api_keys=keys))
    assert "0123456789" not in str(raised.value)


def test_keys_have_names_old_formats_get_stable_derived_ones():
    keys = parse_keys(f"alice:{GEN_KEY}:generate, {READ_KEY}:read\n{ADMIN_KEY}")
    assert [(k.name, k.scope) for k in keys] == [
        ("alice", "generate"),
        (keys[1].name, "read"),
        (keys[2].name, "admin"),
    ]
    # Derived from the key itself: the same after a restart, and different per key.
    again = parse_keys(f"{ADMIN_KEY}, {READ_KEY}:read")
    assert (again[0].name, again[1].name) == (keys[2].name, keys[1].name)
    assert keys[1].name.startswith("key-") and keys[1].name != keys[2].name
    assert READ_KEY not in keys[1].name


def test_body_over_the_cap_is_a_json_413(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    app = create_app(make_config(tmp_path, workflows_dir, max_request_mb=0.001))
    response = app.test_client().post(
        "/api/generate", data=b"x" * 5000, content_type="application/json"
    )
    assert response.status_code == 413
    assert isinstance(response.get_json()["error"], str)
