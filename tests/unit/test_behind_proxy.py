"""The sidecar's side of running behind nginx: X-Accel-Redirect image responses, X-Forwarded-*
trusted only when TRUST_PROXY_HOPS says so, and the request body cap."""

from flask import jsonify, request

from api import create_app
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
VIA_NGINX = {"X-Sidecar-Via": "nginx"}
FORWARDED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "api.example.com",
}


def build(tmp_path, workflows_dir, fake_comfy, **overrides):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(tmp_path, workflows_dir, **overrides)
    (config.comfyui_output_dir / "sub").mkdir(parents=True)
    (config.comfyui_output_dir / "sub" / "a b.png").write_bytes(PNG)
    app = create_app(config)

    @app.get("/_probe")
    def probe():
        return jsonify(addr=request.remote_addr, scheme=request.scheme, host=request.host)

    return app.test_client()


def test_behind_nginx_the_image_is_an_x_accel_redirect(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy, accel_redirect_prefix="/_outputs/")
    response = client.get("/api/image/sub/a b.png", headers=VIA_NGINX)
    assert response.status_code == 200
    assert response.headers["X-Accel-Redirect"] == "/_outputs/sub/a%20b.png"
    assert response.mimetype == "image/png"
    assert response.data == b""
    # A client reaching gunicorn directly gets the bytes.
    direct = client.get("/api/image/sub/a b.png")
    assert direct.data == PNG and "X-Accel-Redirect" not in direct.headers


def test_without_a_prefix_nginx_gets_the_bytes_too(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy)
    response = client.get("/api/image/sub/a b.png", headers=VIA_NGINX)
    assert response.data == PNG and "X-Accel-Redirect" not in response.headers


def test_forwarded_headers_are_ignored_unless_trusted(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy)
    seen = client.get("/_probe", headers=FORWARDED).get_json()
    assert seen == {"addr": "127.0.0.1", "scheme": "http", "host": "localhost"}


def test_one_trusted_hop_uses_what_nginx_sets(tmp_path, workflows_dir, fake_comfy):
    # Open to the network (without it, a client elsewhere is refused: test_access.py).
    client = build(
        tmp_path, workflows_dir, fake_comfy, trust_proxy_hops=1, allow_unauthenticated=True
    )
    seen = client.get("/_probe", headers=FORWARDED).get_json()
    assert seen == {"addr": "203.0.113.7", "scheme": "https", "host": "api.example.com"}
    # Only the last hop is trusted: an address the client prepended is not believed.
    chained = {**FORWARDED, "X-Forwarded-For": "10.6.6.6, 203.0.113.7"}
    assert client.get("/_probe", headers=chained).get_json()["addr"] == "203.0.113.7"


def test_a_body_over_max_request_mb_is_a_json_413(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy, max_request_mb=1.0)
    too_big = b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post("/api/generate", data=too_big, content_type="application/json")
    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == "request_entity_too_large"
    assert {"error", "code", "request_id", "timestamp"} <= set(body)
