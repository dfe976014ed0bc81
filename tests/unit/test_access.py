"""Who may reach the API at all (api/access.py), what tenants may read (api/redaction.py), and
request JSON as the standard defines it (api/strict_json.py)."""

import io

import pytest
import requests

from api import create_app, redaction, strict_json
from api.access import host_allowed, host_name, is_loopback_address, parse_hosts
from tests.support.images import png_bytes
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

KEY = "admin-key-0123456789"
READ = "read-key-0123456789"
ELSEWHERE = {"REMOTE_ADDR": "203.0.113.9"}


def client_of(tmp_path, workflows_dir, fake_comfy, **settings):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    return create_app(make_config(tmp_path, workflows_dir, **settings)).test_client()


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("LocalHost:5000", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("gpu.example.com.", "gpu.example.com"),
    ],
)
def test_host_names_are_read_without_port_or_brackets(header, name):
    assert host_name(header) == name


def test_loopback_names_and_listed_hosts_are_allowed():
    listed = parse_hosts("gpu.example.com, .lab.example")
    for name in ("localhost", "app.localhost", "127.0.0.1", "127.8.9.10", "::1"):
        assert host_allowed(name, ())
    assert host_allowed("gpu.example.com", listed)
    assert host_allowed("lab.example", listed) and host_allowed("a.lab.example", listed)
    for name in ("rebind.attacker.example", "gpu.example.com.evil", "badlab.example", "0.0.0.0"):
        assert not host_allowed(name, listed), name
    assert host_allowed("anything", ("*",))


def test_loopback_addresses():
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", None, ""):
        assert is_loopback_address(address), address
    for address in ("10.0.0.1", "192.0.2.2", "::ffff:10.0.0.1", "not an address"):
        assert not is_loopback_address(address), address


def test_without_keys_only_this_machine_by_its_own_names(tmp_path, workflows_dir, fake_comfy):
    client = client_of(tmp_path, workflows_dir, fake_comfy)
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/jobs", environ_base=ELSEWHERE).json["code"] == "not_local"
    rebound = client.get("/api/jobs", headers={"Host": "rebind.attacker.example"})
    assert rebound.status_code == 403 and rebound.json["code"] == "host_not_allowed"
    assert client.get("/health", headers={"Host": "rebind.attacker.example"}).status_code == 403


def test_open_modes_check_hosts_only_when_listed(tmp_path, workflows_dir, fake_comfy):
    opened = client_of(tmp_path / "a", workflows_dir, fake_comfy, allow_unauthenticated=True)
    assert (
        opened.get("/api/jobs", environ_base=ELSEWHERE, headers={"Host": "gpu"}).status_code == 200
    )
    listed = client_of(
        tmp_path / "b", workflows_dir, fake_comfy, api_keys=KEY, allowed_hosts="gpu.example.com"
    )
    key = {"X-API-Key": KEY}
    assert listed.get("/api/jobs", headers={**key, "Host": "gpu.example.com"}).status_code == 200
    assert listed.get("/api/jobs", headers={**key, "Host": "other.example"}).status_code == 403
    assert listed.get("/api/jobs", headers=key, environ_base=ELSEWHERE).status_code == 200


def test_writes_must_come_from_our_origin_with_the_type_the_endpoint_takes(
    tmp_path, workflows_dir, fake_comfy
):
    client = client_of(tmp_path, workflows_dir, fake_comfy, cors_origins="https://app.example")
    for origin in ("http://attacker.example", "null", "http://localhost:8080"):
        refused = client.post("/api/queue/clear", headers={"Origin": origin})
        assert refused.status_code == 403 and refused.json["code"] == "cross_site_request"
    site = client.post("/api/queue/clear", headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    upload = client.post(
        "/api/upload",
        data={"image": (io.BytesIO(png_bytes()), "x.png")},
        content_type="multipart/form-data",
        headers={"Origin": "http://attacker.example"},
    )
    assert upload.status_code == 403
    ws = client.get(
        "/ws/progress/x", headers={"Upgrade": "websocket", "Origin": "http://attacker.example"}
    )
    assert ws.status_code == 403
    # Our own origin, a CORS origin, and clients that are not browsers pass these checks (and
    # get on to the view: nothing to clear, or the refusal of the wrong body type).
    for headers in ({"Origin": "http://localhost"}, {"Origin": "https://app.example"}, {}):
        assert client.post("/api/queue/clear", headers=headers).status_code == 200, headers
    form = client.post("/api/queue/clear", data={"include_running": "true"})
    assert form.status_code == 415 and "application/json" in form.json["error"]
    assert client.post("/api/upload", json={"image": "x"}).status_code == 415


def test_every_answer_says_nosniff(tmp_path, workflows_dir, fake_comfy):
    client = client_of(tmp_path, workflows_dir, fake_comfy)
    for path in ("/api/jobs", "/api/status/nope", "/"):
        assert client.get(path).headers["X-Content-Type-Options"] == "nosniff"


def test_tenants_read_comfyuis_failures_without_its_address(tmp_path, workflows_dir, fake_comfy):
    client = client_of(tmp_path, workflows_dir, fake_comfy, api_keys=f"{KEY}, {READ}:read")
    fake_comfy.replace(
        "GET", f"{COMFY}/system_stats", body=requests.ConnectionError("cannot connect")
    )
    tenant = client.get("/api/system", headers={"X-API-Key": READ}).json
    assert tenant["error"] == "ComfyUI not responding" and "details" not in tenant
    operator = client.get("/api/system", headers={"X-API-Key": KEY}).json
    assert "comfy.test:8188" in operator["details"]
    public = client.get("/api/health").json
    assert set(public) == {"error", "code", "status", "comfyui", "request_id", "timestamp"}
    assert "comfy.test" in client.get("/api/health", headers={"X-API-Key": KEY}).json["comfyui_url"]


def test_the_command_line_is_the_operators(tmp_path, workflows_dir, fake_comfy):
    client = client_of(tmp_path, workflows_dir, fake_comfy, api_keys=f"{KEY}, {READ}:read")
    stats = {**SYSTEM_STATS, "system": {**SYSTEM_STATS["system"], "argv": ["main.py", "--x"]}}
    fake_comfy.replace("GET", f"{COMFY}/system_stats", json=stats)
    assert "argv" not in client.get("/api/health", headers={"X-API-Key": READ}).json["system"]
    assert client.get("/api/health", headers={"X-API-Key": KEY}).json["system"]["argv"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("No such file: '/workspace/ComfyUI/input/x.png'", "No such file: 'x.png'"),
        ("GET http://10.0.0.5:8188/system_stats answered 500", "GET /system_stats answered 500"),
        ("C:\\ComfyUI\\models\\x.ckpt failed", "x.ckpt failed"),
        ('File "/usr/lib/python3/site.py", line 3', 'File "site.py", line 3'),
        ("a/b/c and 3/4 stay", "a/b/c and 3/4 stay"),
    ],
)
def test_server_paths_and_urls_are_cut_for_tenants(text, shown):
    assert redaction.text(text) == shown
    assert redaction.scrub({"m": [text]}) == {"m": [shown]}


@pytest.mark.parametrize(
    "raw", ["NaN", '{"a": Infinity}', "[-Infinity]", "[" * 100_000, "[" * 65 + "]" * 65]
)
def test_json_that_is_not_json_is_a_value_error(raw):
    with pytest.raises(ValueError):
        strict_json.loads(raw)


def test_json_as_deep_as_requests_get_is_fine():
    assert strict_json.loads("[" * 64 + "]" * 64) is not None
    assert strict_json.loads('{"a": 1.5e300, "b": [1, {"c": null}]}')["a"] == 1.5e300


def test_a_key_holds_at_most_its_share_of_the_watcher_slots():
    from api.exceptions import TooManyWatchers
    from api.job_watch import Watchers

    watchers = Watchers(limit=3, per_key=2)
    watchers.acquire("alice")
    watchers.acquire("alice")
    with pytest.raises(TooManyWatchers, match="This API key"):
        watchers.acquire("alice")
    watchers.acquire("bob")  # the last slot of the worker
    with pytest.raises(TooManyWatchers, match="this worker"):
        watchers.acquire(None)
    watchers.release("alice")
    with watchers.slot(None):  # without keys, only the worker's cap counts
        pass
    watchers.acquire("alice")
