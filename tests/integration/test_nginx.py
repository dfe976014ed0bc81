"""The shipped nginx configuration, served by a real nginx in front of the real sidecar and
ComfyUI: what only nginx does (X-Accel-Redirect, its 413, ComfyUI's UI and WebSocket on their
own server block, basic auth, the subpath, TLS) and that `make stack` runs."""

import base64
import contextlib
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from api.config import Config
from stack.__main__ import nginx_values
from stack.nginx import OPTIONAL_DIR, NginxProcess, split_listen
from tests.integration.conftest import Api, start_sidecar
from tests.support.comfyui import REPO_ROOT, free_ports
from tests.support.faulty_proxy import FaultyProxy
from tests.support.sidecar import wait_for

ERROR_KEYS = {"error", "code", "request_id", "timestamp"}


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def test_health_goes_through_nginx_with_its_headers(nginx, sidecar):
    rid = f"t-{uuid.uuid4().hex}"
    response = session().get(
        nginx.url + "/api/health", headers={"X-Request-ID": rid, "Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy" and "tracker" in body
    # The sidecar saw nginx's request id and echoed it: the answer is the sidecar's.
    assert response.headers["X-Request-ID"] == rid
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "nginx/" not in response.headers.get("Server", "")


def test_image_bytes_come_from_nginx_not_from_gunicorn(sidecar, comfy, tmp_path):
    """A generated image downloads through nginx byte for byte, and what gunicorn sent nginx
    (counted on the wire between them) is only headers, even for a large file."""
    api_port, ui_port = free_ports(2)
    with FaultyProxy("127.0.0.1", sidecar.port) as wire:
        values = {
            "NGINX_LISTEN": f"127.0.0.1:{api_port}",
            "NGINX_COMFYUI_LISTEN": f"127.0.0.1:{ui_port}",
            "NGINX_SIDECAR_UPSTREAM": f"127.0.0.1:{wire.port}",
            "NGINX_COMFYUI_UPSTREAM": f"127.0.0.1:{comfy.port}",
            "NGINX_OUTPUTS_DIR": str(comfy.output_dir),
        }
        with NginxProcess(tmp_path / "nginx", values) as nginx:
            api = Api(nginx.url)
            job = api.generate(
                prompt="accel", workflow="pipeline_check", color=0x3366FF, width=64, height=64
            )
            final = api.wait_final(job["job_id"])
            assert final["status"] == "completed", final
            response = api.get(f"/api/image/{final['output_image']}")
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "image/png"
            assert response.content == (comfy.output_dir / final["output_image"]).read_bytes()
            assert "X-Accel-Redirect" not in response.headers

            big = comfy.output_dir / "sub" / f"big_{uuid.uuid4().hex}.png"
            big.parent.mkdir(exist_ok=True)
            big.write_bytes(os.urandom(4 * 1024 * 1024))
            try:
                before = wire.bytes_from_upstream
                response = api.get(f"/api/image/sub/{big.name}")
                assert response.status_code == 200
                assert response.content == big.read_bytes()
                assert wire.bytes_from_upstream - before < 2048
                # The same file straight from gunicorn: the bytes are there.
                direct = session().get(f"{sidecar.url}/api/image/sub/{big.name}")
                assert direct.content == big.read_bytes()
            finally:
                big.unlink()

            # The internal location is not reachable from outside.
            hidden = session().get(f"{nginx.url}/_outputs/{final['output_image']}")
            assert hidden.status_code == 404
            assert set(hidden.json()) >= ERROR_KEYS


def _nginx_through(wire: FaultyProxy, sidecar, comfy, root: Path) -> NginxProcess:
    """The shipped nginx as `make stack` renders it for this sidecar, reaching it through
    `wire` (which counts the requests nginx sends on)."""
    http_port, ui_port = free_ports(2)
    values = nginx_values(
        Config.from_env(sidecar.env),
        {"STACK_HTTP_PORT": str(http_port), "STACK_COMFYUI_UI_PORT": str(ui_port)},
    )
    values["NGINX_SIDECAR_UPSTREAM"] = f"127.0.0.1:{wire.port}"
    values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{comfy.port}"
    return NginxProcess(root, values).start()


@contextlib.contextmanager
def _keyed_behind_nginx(comfy, root: Path, **env: str):
    """A sidecar with `env` (API keys), the shipped nginx in front of it through a FaultyProxy
    that counts what reaches the sidecar: (wire, nginx), both stopped afterwards."""
    process = start_sidecar(root / "sidecar", comfy, comfy.port, **env)
    try:
        with FaultyProxy("127.0.0.1", process.port) as wire:
            nginx = _nginx_through(wire, process, comfy, root / "nginx")
            try:
                yield wire, nginx
            finally:
                nginx.stop()
    finally:
        process.stop()


def _made_by(owner: Api, comfy, prompt: str) -> tuple[dict, bytes]:
    """A finished job of `owner`'s (its final status) and its image's bytes."""
    job = owner.generate(prompt=prompt, workflow="pipeline_check", width=64)
    final = owner.wait_final(job["job_id"])
    return final, (comfy.output_dir / final["output_image"]).read_bytes()


def test_a_submission_that_waits_for_its_image_gets_it_from_nginx(sidecar, comfy, tmp_path):
    """POST /api/generate?wait= with Accept: image/png through nginx: the answer is the image,
    sent by nginx from the output folder (gunicorn sends only headers), with the job named."""
    with FaultyProxy("127.0.0.1", sidecar.port) as wire:
        nginx = _nginx_through(wire, sidecar, comfy, tmp_path / "nginx")
        try:
            rid = f"t-{uuid.uuid4().hex}"
            body = {"workflow": "pipeline_check", "prompt": "one request", "width": 64}
            before = wire.bytes_from_upstream
            response = session().post(
                nginx.url + "/api/generate?wait=30",
                json={**body, "height": 64, "color": 0x2288CC},
                headers={"Accept": "image/png", "X-Request-ID": rid},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            assert wire.bytes_from_upstream - before < 2048
            assert response.headers["Content-Type"] == "image/png"
            assert response.headers["X-Request-ID"] == rid
            assert response.headers["Content-Security-Policy"] == "sandbox"
            job = Api(nginx.url).status(response.headers["X-Job-ID"])
            assert job["status"] == "completed"
            assert response.headers["Content-Location"] == job["image_url"]
            assert response.content == (comfy.output_dir / job["output_image"]).read_bytes()
            # curl's Accept: */* (and no Accept) keep the JSON answer scripts read.
            plain = session().post(
                nginx.url + "/api/generate?wait=30",
                json={**body, "height": 64, "color": 0x2288CD},
                headers={"Accept": "*/*"},
                timeout=60,
            )
            assert plain.status_code == 200 and plain.json()["status"] == "completed"
            assert "X-Job-ID" not in plain.headers
        finally:
            nginx.stop()


def test_a_final_status_is_read_again_from_nginxs_cache_a_long_poll_never(sidecar, comfy, tmp_path):
    with FaultyProxy("127.0.0.1", sidecar.port) as wire:
        nginx = _nginx_through(wire, sidecar, comfy, tmp_path / "nginx")
        try:
            api = Api(nginx.url)
            job = api.generate(prompt="kept", workflow="pipeline_check", width=64, height=64)
            final = api.wait_final(job["job_id"])
            path = f"/api/status/{job['job_id']}"
            wire.watch_requests(f"GET {path} ".encode())
            answers = [api.get(path) for _ in range(5)]
            assert {a.status_code for a in answers} == {200}
            assert all(a.json() == final for a in answers)
            # The read that saw it final (wait_final's last) was kept: these are all nginx's.
            assert wire.requests_seen(f"GET {path} ".encode()) == 0
            # Each answer carries its own request's id, not the one it was stored with.
            assert len({a.headers["X-Request-ID"] for a in answers}) == 5
            assert answers[-1].headers["ETag"] == answers[0].headers["ETag"]
            wire.watch_requests(f"GET {path}?wait=1 ".encode())
            for _ in range(2):
                assert api.get(path + "?wait=1").json() == final
            assert wire.requests_seen(f"GET {path}?wait=1 ".encode()) == 2
        finally:
            nginx.stop()


def test_nginx_gives_a_kept_status_only_to_the_key_that_read_it(comfy, tmp_path):
    """The status cache is keyed by the credential too: a status nginx keeps for one key is
    never the answer to another key, nor to a request without one."""
    alice, bob = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
    process = start_sidecar(
        tmp_path / "keyed", comfy, comfy.port, API_KEYS=f"alice:{alice}:generate,bob:{bob}:generate"
    )
    try:
        with FaultyProxy("127.0.0.1", process.port) as wire:
            nginx = _nginx_through(wire, process, comfy, tmp_path / "nginx")
            try:
                owner = Api(nginx.url, key=alice)
                job = owner.generate(
                    prompt="alice's", workflow="pipeline_check", width=64, height=64
                )
                final = owner.wait_final(job["job_id"])
                path = f"/api/status/{job['job_id']}"
                wire.watch_requests(f"GET {path} ".encode())
                assert owner.get(path).json() == final
                assert wire.requests_seen(f"GET {path} ".encode()) == 0  # kept by nginx
                for other, status in ((Api(nginx.url, key=bob), 404), (Api(nginx.url), 401)):
                    answer = other.get(path)
                    assert answer.status_code == status and "alice's" not in answer.text
                # Bob's key in the other header: its own entry, answered by the sidecar.
                by_header = requests.get(nginx.url + path, headers={"X-API-Key": bob}, timeout=30)
                assert by_header.status_code == 404
                assert wire.requests_seen(f"GET {path} ".encode()) == 3
            finally:
                nginx.stop()
    finally:
        process.stop()


def test_a_public_deployments_images_are_sent_by_nginx_without_asking_the_sidecar(comfy, tmp_path):
    """No API keys and ALLOW_UNAUTHENTICATED=true: the sidecar would send any image to
    anyone, so nginx does it alone; what it cannot find goes to the sidecar as before."""
    process = start_sidecar(tmp_path / "public", comfy, comfy.port, ALLOW_UNAUTHENTICATED="true")
    try:
        with FaultyProxy("127.0.0.1", process.port) as wire:
            nginx = _nginx_through(wire, process, comfy, tmp_path / "nginx")
            try:
                api = Api(nginx.url)
                job = api.generate(prompt="open", workflow="pipeline_check", width=64, height=64)
                final = api.wait_final(job["job_id"])
                wire.watch_requests(b"GET /api/image/")
                image = comfy.output_dir / final["output_image"]
                by_name = api.get(f"/api/image/{final['output_image']}")
                assert by_name.status_code == 200 and by_name.content == image.read_bytes()
                assert by_name.headers["Content-Type"] == "image/png"
                assert by_name.headers["Content-Security-Policy"] == "sandbox"
                assert wire.requests_seen(b"GET /api/image/") == 0

                sub = comfy.output_dir / "public-sub"
                sub.mkdir(exist_ok=True)
                (sub / "in-sub.png").write_bytes(image.read_bytes())
                outside = tmp_path / "secret.png"
                outside.write_bytes(b"\x89PNG not for you")
                (comfy.output_dir / "public-link.png").symlink_to(outside)
                try:
                    assert api.get(f"/api/image/{job['job_id']}").content == image.read_bytes()
                    in_sub = api.get("/api/image/in-sub.png?subfolder=public-sub")
                    assert in_sub.content == image.read_bytes()
                    for name in ("missing.png", "public-link.png"):
                        refused = api.get(f"/api/image/{name}")
                        assert refused.status_code == 404 and set(refused.json()) >= ERROR_KEYS
                    assert wire.requests_seen(b"GET /api/image/") == 4
                finally:
                    (comfy.output_dir / "public-link.png").unlink()
                wire.stop()  # what goes to the sidecar gets the API's 502 when it is down
                down = session().get(nginx.url + "/api/image/in-sub.png?subfolder=x", timeout=30)
                assert down.status_code == 502 and set(down.json()) >= ERROR_KEYS
            finally:
                nginx.stop()
    finally:
        process.stop()


def test_a_keyed_deployments_image_is_checked_by_the_sidecar_once_then_sent_by_nginx(
    comfy, tmp_path
):
    """With API keys nginx asks the sidecar whether the caller may have every image (an admin
    key), else this very file (a key's own), in requests that carry no bytes, and keeps the
    answers: the same key reading the image again, or an admin key reading any, costs the
    sidecar nothing. Another key, no key, a query, another method: the sidecar answers the
    whole request as before, in the API's error shape, and so does nginx when it is down."""
    alice, bob, admin = (f"{name}-key-0123456789abcdef" for name in ("alice", "bob", "admin"))
    keys = f"alice:{alice}:generate,bob:{bob}:generate,{admin}"
    with _keyed_behind_nginx(comfy, tmp_path, API_KEYS=keys) as (wire, nginx):
        owner = Api(nginx.url, key=alice)
        final, image = _made_by(owner, comfy, "checked")
        path = f"/api/image/{final['output_image']}"
        asked = b"GET /api/image/"
        wire.watch_requests(asked)
        before = wire.bytes_from_upstream
        first = owner.get(path)
        assert first.status_code == 200 and first.content == image
        assert first.headers["Content-Type"] == "image/png"
        assert first.headers["Content-Security-Policy"] == "sandbox"
        assert first.headers["X-Request-ID"]
        # Two checks (every image? no; this one? yes), without the bytes.
        assert wire.requests_seen(asked) == 2
        assert wire.bytes_from_upstream - before < 4096
        again = [owner.get(path) for _ in range(3)]
        assert all(a.status_code == 200 and a.content == image for a in again)
        part = session().get(
            nginx.url + path,
            headers={"Authorization": f"Bearer {alice}", "Range": "bytes=0-7"},
            timeout=30,
        )
        assert part.status_code == 206 and part.content == image[:8]
        assert wire.requests_seen(asked) == 2  # the kept answers, for alice's key only

        for other, status in ((Api(nginx.url, key=bob), 404), (Api(nginx.url), 401)):
            answer = other.get(path)
            assert answer.status_code == status and set(answer.json()) >= ERROR_KEYS
        # Bob: two checks (no, no) and the whole request; no key: one (a 401), the whole.
        assert wire.requests_seen(asked) == 2 + 3 + 2

        # An admin key: one check for every image there is.
        boss = Api(nginx.url, key=admin)
        other_image = comfy.output_dir / f"admin-{uuid.uuid4().hex}.png"
        other_image.write_bytes(image)
        try:
            assert boss.get(path).content == image
            assert boss.get(f"/api/image/{other_image.name}").content == image
            assert wire.requests_seen(asked) == 2 + 3 + 2 + 1
        finally:
            other_image.unlink()

        with_query = owner.get(path + "?subfolder=")
        assert with_query.status_code == 200 and with_query.content == image
        refused = session().post(nginx.url + path, timeout=30)
        assert refused.status_code == 405 and set(refused.json()) >= ERROR_KEYS
        missing = owner.get("/api/image/missing.png")
        assert missing.status_code == 404 and set(missing.json()) >= ERROR_KEYS

        wire.stop()  # (a 502 is nginx's own answer, not one the API documents)
        for key, asked_for in ((alice, path + "?subfolder="), (bob, "/api/image/x.png")):
            down = session().get(
                nginx.url + asked_for,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert down.status_code == 502 and set(down.json()) >= ERROR_KEYS


def test_a_tenants_signed_image_urls_are_sent_by_nginx_without_asking_the_sidecar(comfy, tmp_path):
    """IMAGE_URL_SECRET: the image URL a key that sees only its own jobs is handed is signed;
    nginx checks the signature itself and sends the file with no request to the sidecar, with
    or without the key. Another file under that signature, a tampered or expired one, ?subfolder=
    on top: the sidecar answers the whole request, as without a signature."""
    alice, bob = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
    secret = "image-url-secret-0123456789abcdefghij"
    env = {"API_KEYS": f"alice:{alice}:generate,bob:{bob}:generate", "IMAGE_URL_SECRET": secret}
    with _keyed_behind_nginx(comfy, tmp_path, **env) as (wire, nginx):
        owner = Api(nginx.url, key=alice)
        final, image = _made_by(owner, comfy, "signed")
        url = final["image_url"]
        path, query = url.split("?")
        assert path == f"/api/image/{final['output_image']}"
        assert query.startswith("expires=") and "&signature=" in query
        asked = b"GET /api/image/"
        wire.watch_requests(asked)
        wire.watch_requests(b"HEAD /api/")
        for headers in ({}, {"Authorization": f"Bearer {alice}"}):
            sent = session().get(nginx.url + url, headers=headers, timeout=30)
            assert sent.status_code == 200 and sent.content == image
            assert sent.headers["Content-Type"] == "image/png"
            assert sent.headers["Content-Security-Policy"] == "sandbox"
        head = session().head(nginx.url + url, timeout=30)
        assert head.status_code == 200
        assert wire.requests_seen(asked) + wire.requests_seen(b"HEAD /api/") == 0

        # Bob's key reads none of Alice's, signed or not; and no key, the plain path.
        refused = Api(nginx.url, key=bob).get(path)
        assert refused.status_code == 404
        assert session().get(nginx.url + path, timeout=30).status_code == 401
        expires = query.split("&")[0].split("=")[1]
        forged = [
            f"{path}?expires={int(expires) + 1}&{query.split('&')[1]}",  # longer
            f"{path}?expires={expires}&signature=AAAAAAAAAAAAAAAAAAAAAA",
            f"{path}?expires=1000&{query.split('&')[1]}",  # expired
            f"{url}&subfolder=elsewhere",  # the sidecar: not the file signed
        ]
        seen = wire.requests_seen(asked)
        for forgery in forged:
            answer = session().get(nginx.url + forgery, timeout=30)
            assert answer.status_code in (401, 404), forgery
            assert set(answer.json()) >= ERROR_KEYS and answer.content != image
        # Each went to the sidecar whole.
        assert wire.requests_seen(asked) == seen + len(forged)


def test_a_public_deployments_polls_are_answered_from_status_files(comfy, tmp_path):
    """No API keys and ALLOW_UNAUTHENTICATED=true: the sidecar keeps the status of each job
    polled plainly in a file and nginx answers plain polls from it, the sidecar's own answer,
    as the job moves; the first plain poll, long polls, queries and unknown jobs still reach
    the sidecar."""
    docs = tmp_path / "status-docs"
    process = start_sidecar(
        tmp_path / "public",
        comfy,
        comfy.port,
        ALLOW_UNAUTHENTICATED="true",
        STATUS_DOCS_DIR=str(docs),
    )
    try:
        with FaultyProxy("127.0.0.1", process.port) as wire:
            nginx = _nginx_through(wire, process, comfy, tmp_path / "nginx")
            try:
                api = Api(nginx.url)
                # Long enough for the file to show progress: it is rewritten at most every
                # second while the job runs (status_docs.REWRITE_GAP).
                job = api.generate(
                    prompt="polled", workflow="sidecar_test_sleep", steps=8, seconds_per_step=0.4
                )
                path = f"/api/status/{job['job_id']}"
                file = docs / f"{job['job_id']}.json"
                # A file only once a plain poll asked for it: the sidecar answers that one.
                wire.watch_requests(f"GET {path} ".encode())
                assert api.get(path).json()["status"] in ("queued", "processing")
                assert wire.requests_seen(f"GET {path} ".encode()) == 1
                wait_for(file.exists, 10, 0.01, "a file")
                seen = []

                def ended():
                    response = api.get(path)
                    assert response.status_code == 200, response.text
                    seen.append(response)
                    body = response.json()
                    return body["status"] in ("completed", "failed", "cancelled") and body

                final = wait_for(ended, 60, 0.05, "the job to end, polled through nginx")
                assert final["status"] == "completed", final
                assert any(0 < r.json()["progress"] < 1 for r in seen), "no progress seen"
                assert wire.requests_seen(f"GET {path} ".encode()) == 1  # then nginx alone
                answer = seen[-1]
                assert answer.headers["Content-Type"] == "application/json"
                assert answer.headers["Cache-Control"] == "no-cache"
                assert "ETag" not in answer.headers and "Last-Modified" not in answer.headers
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["X-Request-ID"]
                # The file is the sidecar's own answer (a query sends the poll to it).
                wire.watch_requests(f"GET {path}?".encode())
                asked = api.get(path + "?fresh=1")
                assert asked.json() == final
                image = api.get(final["image_url"])
                assert image.content == (comfy.output_dir / final["output_image"]).read_bytes()
                assert api.get(path + "?wait=1").json()["status"] == "completed"
                missing = api.get("/api/status/no-such-job")
                assert missing.status_code == 404 and set(missing.json()) >= ERROR_KEYS
                assert wire.requests_seen(f"GET {path}?".encode()) == 2
            finally:
                nginx.stop()
    finally:
        process.stop()


def _send_headers_only(base: str, path: str, length: int) -> tuple[int, dict, bytes]:
    """POST with a Content-Length and no body: the server must refuse it from the headers."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def test_too_large_body_is_a_413_in_the_apis_error_shape(nginx, sidecar):
    # The sidecar's MAX_REQUEST_MB default, as nginx/entrypoint.d/ renders it for nginx.
    assert nginx.values["NGINX_MAX_BODY"] == "50m"
    limit = 50 * 1024 * 1024

    status, headers, raw = _send_headers_only(nginx.url, "/api/generate", limit + 1)
    assert status == 413
    assert headers["Content-Type"] == "application/json"
    from_nginx = json.loads(raw)
    assert set(from_nginx) == ERROR_KEYS
    assert from_nginx["code"] == "request_entity_too_large"

    # The sidecar's own 413 (reached directly) has the same shape and code.
    status, _, raw = _send_headers_only(sidecar.url, "/api/generate", limit + 1)
    assert status == 413
    from_sidecar = json.loads(raw)
    assert set(from_sidecar) == ERROR_KEYS
    assert from_sidecar["code"] == from_nginx["code"]

    # At the limit, nginx lets it through and the sidecar judges the body.
    body = b'{"prompt": "' + b"x" * (limit - 14) + b'"}'
    assert len(body) == limit
    response = session().post(
        nginx.url + "/api/generate", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text[:200]


def _ws_first_message(url: str, origin: str, host: str | None = None, **headers) -> dict:
    ws = websocket.create_connection(url, timeout=10, origin=origin, host=host, header=headers)
    try:
        return json.loads(ws.recv())
    finally:
        ws.close()


def _object_info_reaches_comfyui(base: str, auth=None) -> None:
    """ComfyUI's node list, under /api/object_info (new servers, the modern frontend) or
    /object_info (servers before mid-2024, which have no /api aliases)."""
    found = {}
    for path in ("/api/object_info", "/object_info"):
        response = session().get(base + path, auth=auth, timeout=60)
        found[path] = response.status_code
        if response.status_code == 200:
            assert "KSampler" in response.json()
            assert "X-Request-ID" not in response.headers  # not the sidecar's answer
    assert 200 in found.values(), found


def test_comfyui_ui_has_its_own_server_block_with_websocket(nginx, comfy):
    page = session().get(nginx.comfyui_url + "/")
    assert page.status_code == 200
    assert "<title>ComfyUI</title>" in page.text
    _object_info_reaches_comfyui(nginx.comfyui_url)
    ws_base = nginx.comfyui_url.replace("http://", "ws://")
    message = _ws_first_message(f"{ws_base}/ws?clientId=nginx-test", nginx.comfyui_url)
    assert message["type"] == "status"
    assert message["data"]["sid"] == "nginx-test"


def test_the_apis_paths_reach_the_sidecar_not_comfyui(nginx):
    for path in ("/api/health", "/api/object_info", "/api/queue", "/api/prompt"):
        rid = f"t-{uuid.uuid4().hex}"
        response = session().get(nginx.url + path, headers={"X-Request-ID": rid})
        assert response.headers.get("X-Request-ID") == rid, path  # the sidecar echoes it
        if response.status_code >= 400:
            assert set(response.json()) >= ERROR_KEYS, path
    # The subpath is off by default: nothing of ComfyUI's on the API's host.
    assert session().get(nginx.url + "/comfyui/").status_code == 404


def test_a_stream_and_a_long_poll_outlast_the_default_read_timeout(tmp_path):
    """/api/ keeps its shipped read timeout and streams unbuffered, while the rest of the
    host gets a deliberately short default (1 s here, instead of nginx's 60 s)."""
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slow_upstream", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(upstream.stdout.readline())
        api_port, ui_port = free_ports(2)
        values = {
            "NGINX_LISTEN": f"127.0.0.1:{api_port}",
            "NGINX_COMFYUI_LISTEN": f"127.0.0.1:{ui_port}",
            "NGINX_SIDECAR_UPSTREAM": f"127.0.0.1:{port}",
            "NGINX_COMFYUI_UPSTREAM": f"127.0.0.1:{port}",
            "NGINX_OUTPUTS_DIR": str(tmp_path),
            "NGINX_PROXY_READ_TIMEOUT": "1s",
        }
        with NginxProcess(tmp_path / "nginx", values) as nginx:
            assert nginx.values["NGINX_API_READ_TIMEOUT"] == "3600s"  # the shipped value
            # A long poll that stays silent for 2.5 s, then answers.
            response = session().get(nginx.url + "/api/poll?quiet=2.5", timeout=10)
            assert response.status_code == 200 and response.json() == {"done": True}
            # The same silence outside /api/ is cut by the short default: the override is
            # what kept the long poll alive.
            cut = session().get(nginx.url + "/health?quiet=2.5", timeout=10)
            assert cut.status_code == 504 and cut.json()["code"] == "gateway_timeout"
            # An event stream, 1.5 s between events: each arrives when it is sent.
            with session().get(nginx.url + "/api/events?n=3&gap=1.5", stream=True) as r:
                arrivals = []
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        sent = float(line.split()[1])
                        arrivals.append(time.time() - sent)
                assert len(arrivals) == 3
                assert max(arrivals) < 0.5, f"nginx held events back: {arrivals}"
    finally:
        upstream.kill()
        upstream.wait()


def _htpasswd(path: Path, user: str, password: str) -> None:
    """The way docs/deployment.md tells operators to write the file."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    path.write_text(f"{user}:{hashed}\n")


@pytest.fixture
def ui_nginx(comfy, sidecar, tmp_path):
    """Basic auth on, ComfyUI's UI on a host name on the API's port and under /comfyui/, plus
    the TLS servers with a throwaway certificate."""
    _htpasswd(tmp_path / "comfyui.htpasswd", "artist", "s3cret")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    api_port, tls_port, comfyui_tls_port = free_ports(3)
    listen = f"127.0.0.1:{api_port}"
    values = {
        "NGINX_LISTEN": listen,
        "NGINX_COMFYUI_LISTEN": listen,
        "NGINX_COMFYUI_SERVER_NAME": "comfyui.test",
        "NGINX_SIDECAR_UPSTREAM": f"127.0.0.1:{sidecar.port}",
        "NGINX_COMFYUI_UPSTREAM": f"127.0.0.1:{comfy.port}",
        "NGINX_OUTPUTS_DIR": str(comfy.output_dir),
        "NGINX_COMFYUI_AUTH": "ComfyUI",
        "NGINX_COMFYUI_HTPASSWD": str(tmp_path / "comfyui.htpasswd"),
        "NGINX_COMFYUI_SUBPATH_ENABLED": "on",
        "NGINX_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "NGINX_COMFYUI_TLS_LISTEN": f"127.0.0.1:{comfyui_tls_port}",
        "NGINX_TLS_CERT": str(tmp_path / "cert.pem"),
        "NGINX_TLS_KEY": str(tmp_path / "key.pem"),
    }
    with NginxProcess(tmp_path / "nginx", values, [OPTIONAL_DIR / "tls.conf.template"]) as n:
        yield n


def test_basic_auth_host_name_and_subpath_for_comfyuis_ui(ui_nginx):
    base = ui_nginx.url
    creds = ("artist", "s3cret")
    host = {"Host": "comfyui.test"}
    # On the host name: ComfyUI, behind basic auth, WebSocket included.
    assert session().get(base + "/", headers=host).status_code == 401
    assert session().get(base + "/", headers=host, auth=("artist", "wrong")).status_code == 401
    page = session().get(base + "/", headers=host, auth=creds)
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
    token = base64.b64encode(b"artist:s3cret").decode()
    ws_base = base.replace("http://", "ws://")
    with pytest.raises(websocket.WebSocketBadStatusException):
        _ws_first_message(f"{ws_base}/ws?clientId=a", "http://comfyui.test", "comfyui.test")
    message = _ws_first_message(
        f"{ws_base}/ws?clientId=a",
        "http://comfyui.test",
        "comfyui.test",
        Authorization=f"Basic {token}",
    )
    assert message["type"] == "status"
    # Any other host name on the same port: the API, without auth.
    health = session().get(base + "/api/health")
    assert health.status_code == 200 and "tracker" in health.json()
    # Under the subpath of the API's host: ComfyUI again, same auth.
    assert session().get(base + "/comfyui/").status_code == 401
    page = session().get(base + "/comfyui/", auth=creds)
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
    assert session().get(base + "/comfyui", allow_redirects=False).headers["Location"] == (
        "/comfyui/"
    )
    _object_info_reaches_comfyui(base + "/comfyui", auth=creds)
    message = _ws_first_message(
        f"{ws_base}/comfyui/ws?clientId=b", base, Authorization=f"Basic {token}"
    )
    assert message["type"] == "status"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_servers_answer_with_the_same_locations(ui_nginx):
    host, port = split_listen(ui_nginx.values["NGINX_TLS_LISTEN"])
    response = session().get(f"https://{host}:{port}/api/health", verify=False)
    assert response.status_code == 200 and "tracker" in response.json()
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    host, port = split_listen(ui_nginx.values["NGINX_COMFYUI_TLS_LISTEN"])
    page = session().get(f"https://{host}:{port}/", verify=False, auth=("artist", "s3cret"))
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text


def test_make_stack_serves_the_api_and_stops_on_ctrl_c(comfy, tmp_path):
    http_port, ui_port, api_port = free_ports(3)
    env = {
        **os.environ,
        "COMFYUI_HOST": "127.0.0.1",
        "COMFYUI_PORT": str(comfy.port),
        "API_PORT": str(api_port),
        "WORKSPACE_PATH": str(tmp_path / "workspace"),
        "COMFYUI_OUTPUT_DIR": str(comfy.output_dir),
        "TRACKER_ENABLED": "false",
        "GUNICORN_WORKERS": "1",
        "STACK_HTTP_PORT": str(http_port),
        "STACK_COMFYUI_UI_PORT": str(ui_port),
    }
    stack = subprocess.Popen(
        [sys.executable, "-m", "stack"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def healthy():
            try:
                return session().get(f"http://127.0.0.1:{http_port}/api/health", timeout=2)
            except requests.ConnectionError:
                return None

        response = wait_for(healthy, 30, 0.2, "make stack's nginx to answer")
        assert response.status_code == 200 and response.json()["status"] == "healthy"
        page = session().get(f"http://127.0.0.1:{ui_port}/")
        assert "<title>ComfyUI</title>" in page.text
    finally:
        stack.send_signal(signal.SIGINT)
        output = stack.communicate(timeout=40)[0]
    assert stack.returncode == 0, output
    assert "Ctrl-C stops" in output


def test_gzip_is_real(nginx):
    response = session().get(
        nginx.url + "/api/health", headers={"Accept-Encoding": "gzip"}, stream=True
    )
    raw = response.raw.read(decode_content=False)
    assert json.loads(gzip.decompress(raw))["status"] == "healthy"
