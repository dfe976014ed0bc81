"""GET /api/image (path safety) and the health probes."""

import os

import pytest
import requests

from tests.unit.conftest import COMFY, SYSTEM_STATS

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def output_dir(config, tmp_path):
    root = config.comfyui_output_dir
    (root / "sub").mkdir(parents=True)
    (root / "Flux2_Turbo_00001_.png").write_bytes(PNG)
    (root / "sub" / "inner_00001_.png").write_bytes(PNG + b"sub")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"outside")
    os.symlink(secret, root / "link_out.png")
    os.symlink(tmp_path, root / "dir_out")
    return root


def test_image_by_filename(client, output_dir):
    response = client.get("/api/image/Flux2_Turbo_00001_.png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == PNG


def test_image_in_a_subfolder_both_ways(client, output_dir):
    assert client.get("/api/image/sub/inner_00001_.png").data == PNG + b"sub"
    assert client.get("/api/image/inner_00001_.png?subfolder=sub").data == PNG + b"sub"


@pytest.mark.parametrize(
    "path",
    [
        "/api/image/../secret.png",
        "/api/image/..%2Fsecret.png",
        "/api/image/%2E%2E/secret.png",
        "/api/image/sub/../../secret.png",
        "/api/image/x.png?subfolder=..",
        "/api/image/secret.png?subfolder=/etc",
        "/api/image/a%00.png",
        "/api/image/..%5Csecret.png",
        "/api/image//etc/passwd",
    ],
)
def test_traversal_is_refused(client, output_dir, path):
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert "error" in response.get_json()
    assert b"outside" not in response.data


@pytest.mark.parametrize("path", ["/api/image/link_out.png", "/api/image/dir_out/secret.png"])
def test_symlinks_pointing_out_are_not_served(client, output_dir, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"] == "Image not found"


def test_missing_image_is_404(client, output_dir):
    assert client.get("/api/image/nope.png").status_code == 404


def test_health_when_comfyui_answers(client, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["comfyui"] == "connected"
    assert body["output_dir"].endswith("ComfyUI/output")
    assert body["system"]["devices"][0]["name"] == "cpu"


def test_health_when_comfyui_is_down(client, fake_comfy):
    fake_comfy.replace("GET", f"{COMFY}/system_stats", body=requests.ConnectionError("refused"))
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    assert body["error"] == "ComfyUI not responding"
    liveness = client.get("/health")
    assert liveness.status_code == 200
    assert liveness.get_json()["comfyui_available"] is False


def test_unknown_route_and_method_use_the_error_shape(client):
    for response in (client.get("/api/nope"), client.delete("/api/generate")):
        body = response.get_json()
        assert response.status_code in (404, 405)
        assert isinstance(body["error"], str) and body["request_id"]
