"""The sidecar's side of running behind nginx: X-Accel-Redirect image responses, X-Forwarded-*
trusted only when TRUST_PROXY_HOPS says so, and the request body cap."""

from flask import jsonify, request

from api import create_app
from tests.support.jobs import add_job
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


CHECK = {**VIA_NGINX, "X-Sidecar-Check": "image"}
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"


def test_nginxs_check_of_an_image_is_a_yes_only_for_the_very_file_it_would_send(
    tmp_path, workflows_dir, fake_comfy
):
    """images-off.conf asks before it sends a file itself: 200 (kept STATUS_CACHE_SECONDS)
    only for <output folder>/<the requested name>; anything else is a 403 and no bytes, so
    that nginx sends the request on whole."""
    client = build(tmp_path, workflows_dir, fake_comfy, accel_redirect_prefix="/_outputs/")
    outputs = tmp_path / "workspace" / "ComfyUI" / "output"
    (outputs / "elsewhere.png").symlink_to(outputs / "sub" / "a b.png")
    yes = client.get("/api/image/sub/a b.png", headers=CHECK)
    assert (yes.status_code, yes.data) == (200, b"")
    assert yes.headers["X-Accel-Expires"] == "30" and "X-Accel-Redirect" not in yes.headers
    for path in (
        "/api/image/elsewhere.png",  # nginx refuses the link; the sidecar sends its target
        "/api/image/a b.png?subfolder=sub",
        "/api/image/missing.png",
        "/api/image/../secret.png",
        "/api/image/notes.txt",
    ):
        no = client.get(path, headers=CHECK)
        assert (no.status_code, no.data[:1]) in ((403, b""), (403, b"{")), path
        assert "X-Accel-Expires" not in no.headers and "X-Accel-Redirect" not in no.headers
    # The whole request, as nginx sends it on after a 403: the sidecar's usual answers.
    assert (
        client.get("/api/image/elsewhere.png", headers=VIA_NGINX).headers["X-Accel-Redirect"]
        == "/_outputs/sub/a%20b.png"
    )
    assert client.get("/api/image/missing.png", headers=VIA_NGINX).status_code == 404


def test_a_check_is_a_403_for_a_key_that_may_not_have_the_image(
    tmp_path, workflows_dir, fake_comfy
):
    client = build(
        tmp_path,
        workflows_dir,
        fake_comfy,
        accel_redirect_prefix="/_outputs/",
        api_keys=f"alice:{ALICE}:generate, bob:{BOB}:generate",
        status_cache_seconds=0,
    )
    store = client.application.extensions["sidecar"].store
    add_job(store, "j1", owner="alice")
    store.add_file("j1", "sub/a b.png")

    def check(key: str | None) -> tuple[int, str | None]:
        headers = {**CHECK, **({"Authorization": f"Bearer {key}"} if key else {})}
        answer = client.get("/api/image/sub/a b.png", headers=headers)
        return answer.status_code, answer.headers.get("X-Accel-Expires")

    # Alice's yes is not kept (STATUS_CACHE_SECONDS=0); Bob: 403; no key, a wrong key: the
    # 401 auth_request hands on (nginx then sends the request whole, for the JSON 401).
    assert check(ALICE) == (200, None)
    assert check(BOB) == (403, None)
    assert check(None) == (401, None)
    assert check("wrong-key-0123456789abcdef") == (401, None)
    assert client.get("/api/image/sub/a b.png", headers=VIA_NGINX).status_code == 401


def test_nginxs_first_check_asks_whether_the_caller_may_have_every_image(
    tmp_path, workflows_dir, fake_comfy
):
    """ "caller": a yes for who sees every image (an admin key; no keys, a client let in), a
    no for a key that sees its own only; both kept (nginx's next check follows a no). The
    file is not looked at: nginx sends only what it finds itself."""
    admin = "admin-key-0123456789abcdef"
    keyed = build(
        tmp_path / "keyed",
        workflows_dir,
        fake_comfy,
        api_keys=f"alice:{ALICE}:generate, {admin}",
    )
    asks = {**VIA_NGINX, "X-Sidecar-Check": "caller"}

    def check(client, key: str | None, path: str = "/api/image/any.png", **kw):
        headers = {**asks, **({"Authorization": f"Bearer {key}"} if key else {})}
        answer = client.get(path, headers=headers, **kw)
        assert answer.data == b"" or answer.status_code != 200
        return answer.status_code, answer.headers.get("X-Accel-Expires")

    assert check(keyed, admin) == (200, "30")
    assert check(keyed, admin, "/api/image/sub/none.webp") == (200, "30")
    assert check(keyed, ALICE) == (403, "30")
    assert check(keyed, "wrong-key-0123456789abcdef") == (401, None)
    assert check(keyed, None) == (401, None)

    open_to_loopback = build(tmp_path / "open", workflows_dir, fake_comfy)
    assert check(open_to_loopback, None) == (200, "30")
    elsewhere = check(open_to_loopback, None, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert elsewhere == (403, None)


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
