"""A traversal corpus against every endpoint that takes a name or path, sent as raw bytes
(no client-side normalisation) to the real server, directly and through nginx."""

import http.client
import os
from urllib.parse import urlsplit

import pytest

# Each is a path fragment that tries to name something outside its directory.
CORPUS = [
    "../secret.png",
    "..%2Fsecret.png",
    "%2e%2e%2fsecret.png",
    "%2E%2E/secret.png",
    "..%252Fsecret.png",
    "....//secret.png",
    "..\\secret.png",
    "..%5Csecret.png",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "sub/../../secret.png",
    "secret.png%00.png",
    "%00",
    "link_out.png",
    "dir_out/secret.png",
]


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw_post(base: str, path: str, body: bytes) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def planted(comfy, tmp_path_factory):
    """A secret outside the output directory, and symlinks inside it pointing there."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(b"SECRET-BYTES")
    links = [comfy.output_dir / "link_out.png", comfy.output_dir / "dir_out"]
    os.symlink(outside / "secret.png", links[0])
    os.symlink(outside, links[1])
    (comfy.output_dir / "sub").mkdir(exist_ok=True)
    yield outside
    for link in links:
        link.unlink()


@pytest.mark.parametrize("attack", CORPUS)
def test_image_paths_never_leave_the_output_directory(api, planted, attack):
    for path in (f"/api/image/{attack}", f"/api/image/x.png?subfolder={attack}"):
        status, body = raw_get(api.base, path)
        assert status in (400, 404), (path, status)
        assert b"SECRET-BYTES" not in body and b"root:" not in body


@pytest.mark.parametrize("attack", CORPUS)
def test_save_names_never_leave_the_output_directory(api, planted, comfy, attack):
    job = api.generate(prompt="s", workflow="sidecar_test_sleep", steps=1, seconds_per_step=0)
    api.wait_final(job["job_id"])
    before = set(os.listdir(planted))
    status, _ = raw_post(
        api.base,
        f"/api/save/{job['job_id']}",
        b'{"filename": "%s"}' % attack.replace("\\", "\\\\").encode(),
    )
    assert status in (400, 404), status
    assert set(os.listdir(planted)) == before


@pytest.mark.parametrize("attack", CORPUS)
def test_ids_and_workflow_names_are_only_looked_up(api, planted, attack):
    for path in (
        f"/api/status/{attack}",
        f"/api/workflows/{attack}",
        f"/api/status/{attack}/events",
    ):
        status, body = raw_get(api.base, path)
        assert status in (400, 404), (path, status)
        assert b"SECRET-BYTES" not in body
