"""No way in without a key: the sidecar without API_KEYS answers this machine only, by its own
host names, and what it serves from the output folder cannot carry script. Against the real
gunicorn, directly and through nginx."""

import socket
import uuid

import pytest
import requests
import websocket

from tests.integration.conftest import start_nginx
from tests.support.comfyui import free_port

REBIND = {"Host": "rebind.attacker.example"}
IMAGE_SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def test_a_host_name_that_is_not_ours_is_refused(api, job_count):
    """DNS rebinding: a page on rebind.attacker.example, whose name now resolves to 127.0.0.1,
    talks to the sidecar as its own origin; its requests carry that Host."""
    before = job_count()
    body = {"prompt": "rebound", "workflow": "pipeline_check", "width": 64, "height": 64}
    refused = api.post("/api/generate", json=body, headers=REBIND)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "host_not_allowed"
    assert job_count() == before
    for path in ("/api/jobs", "/api/health", "/"):
        assert api.get(path, headers=REBIND).status_code == 403
    # This machine's own names are fine, whichever the client uses.
    port = api.base.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost"):
        assert api.get("/api/jobs", headers={"Host": host}).status_code == 200, host


def test_without_keys_a_caller_elsewhere_is_refused(api, sidecar):
    """Behind a proxy (TRUST_PROXY_HOPS=1, as here), the address that counts is the one the
    proxy saw; through nginx a client cannot forge it."""
    elsewhere = {"X-Forwarded-For": "203.0.113.9"}
    response = api.get("/api/jobs", headers=elsewhere)
    if api.mode == "direct":
        # What the trusted proxy would say of a client on another machine.
        assert response.status_code == 403 and response.json()["code"] == "not_local"
    else:
        # nginx appends the address it saw (127.0.0.1): the forged one is not believed.
        assert response.status_code == 200


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the one its default route uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_without_keys_nginx_on_a_public_address_does_not_open_the_api(sidecar, comfy, tmp_path):
    """An nginx listening beyond loopback in front of a sidecar without keys: the sidecar sees
    (through X-Forwarded-For) that the caller is elsewhere and refuses it."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    nginx = start_nginx(sidecar, comfy, tmp_path / "nginx", NGINX_LISTEN=f"{address}:{free_port()}")
    try:
        outside = requests.Session()
        outside.trust_env = False
        for path in ("/api/jobs", "/api/openapi.json", "/"):
            response = outside.get(nginx.url + path, timeout=10)
            assert response.status_code == 403 and response.json()["code"] == "not_local"
        assert outside.post(nginx.url + "/api/queue/clear", timeout=10).status_code == 403
    finally:
        nginx.stop()


def test_writes_from_another_origin_are_refused_and_plain_clients_work_as_before(api, job_count):
    before = job_count()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cleared = api.post("/api/queue/clear?include_running=true", data="include_running=true",
                       headers={**form, "Origin": "http://attacker.example"})  # fmt: skip
    assert cleared.status_code == 403 and cleared.json()["code"] == "cross_site_request"
    # Without an Origin (not a browser), a form body is still not JSON.
    assert (
        api.post("/api/queue/clear", data="include_running=true", headers=form).status_code == 415
    )
    text = {"Content-Type": "text/plain"}
    assert api.post("/api/generate", data='{"prompt": "x"}', headers=text).status_code == 415
    assert job_count() == before
    # The primary API's scripts, unchanged: curl -X POST with no body, and JSON bodies.
    assert api.post("/api/queue/clear").json()["message"] == "Queue cleared"
    same = {"Origin": api.base}
    assert api.post("/api/queue/clear", json={}, headers=same).status_code == 200


def test_a_websocket_from_another_origin_is_refused(api):
    job = api.generate(prompt="ws", workflow="pipeline_check", width=64, height=64)
    url = api.base.replace("http", "ws", 1) + f"/ws/progress/{job['job_id']}"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin="http://attacker.example", timeout=10)
    assert refused.value.status_code == 403
    ws = websocket.create_connection(url, origin=api.base, timeout=10)
    ws.close()


@pytest.fixture
def planted(comfy):
    """Files anyone who can use ComfyUI could leave in its output folder."""
    stem = f"planted_{uuid.uuid4().hex}"
    script = b"<html><script>alert(document.domain)</script></html>"
    files = {
        f"{stem}.html": script,
        f"{stem}.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        f"{stem}.png": script,  # lies about its type
    }
    for name, data in files.items():
        (comfy.output_dir / name).write_bytes(data)
    yield stem
    for name in files:
        (comfy.output_dir / name).unlink(missing_ok=True)


def test_the_output_folder_serves_images_that_cannot_run_script(api, planted):
    for kind in ("html", "svg"):
        response = api.get(f"/api/image/{planted}.{kind}")
        assert response.status_code == 404, response.headers
        assert b"<script>" not in response.content
    lying = api.get(f"/api/image/{planted}.png")
    assert lying.status_code == 200
    assert lying.headers["Content-Type"] == "image/png"
    for header, value in IMAGE_SAFETY.items():
        assert lying.headers[header] == value, (api.mode, header, lying.headers)
    # A real result, through nginx sent from /_outputs/ by nginx itself, says the same.
    job = api.generate(prompt="real", workflow="pipeline_check", width=64, height=64)
    final = api.wait_final(job["job_id"])
    real = api.get(f"/api/image/{final['output_image']}")
    assert real.status_code == 200 and real.headers["Content-Type"] == "image/png"
    for header, value in IMAGE_SAFETY.items():
        assert real.headers[header] == value
