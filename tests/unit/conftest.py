"""Unit-test fixtures: the app with a fake ComfyUI (responses) and no tracker thread."""

import json
import time
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest
import responses

from api import comfyui, create_app
from api.config import Config
from tests.support.object_info import object_info_0330

COMFY = "http://comfy.test:8188"

SYSTEM_STATS = {
    "system": {"os": "posix", "python_version": "3.11.7", "embedded_python": False},
    "devices": [
        {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": 25276510208,
            "vram_free": 24286277632,
            "torch_vram_total": 25276510208,
            "torch_vram_free": 24286277632,
        }
    ],
}


def make_config(tmp_path: Path, workflows_dir: Path, **overrides) -> Config:
    return Config.from_env(
        {
            "COMFYUI_HOST": "comfy.test",
            "COMFYUI_PORT": "8188",
            "WORKSPACE_PATH": str(tmp_path / "workspace"),
            "WORKFLOWS_DIR": str(workflows_dir),
            "TRACKER_ENABLED": "false",
        },
        **overrides,
    )


@pytest.fixture(autouse=True)
def calls_through_requests(monkeypatch):
    """Every call to ComfyUI through requests' transport adapter, where `responses` fakes it
    (the http.client path, api/comfyui_http.py, has its own tests against a real server)."""
    monkeypatch.setattr(comfyui, "PLAIN_HTTP", False)


@pytest.fixture
def fake_comfy():
    """A fake ComfyUI; tests register the answers they need. Unmatched calls fail loudly, and
    so does an answer that was registered but never asked for: a mistyped route must not pass
    as "ComfyUI down"."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def config(tmp_path, workflows_dir) -> Config:
    return make_config(tmp_path, workflows_dir)


@pytest.fixture
def app(config, fake_comfy):
    # create_app probes ComfyUI once to log whether it answers.
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


def never_asked(mock, *routes: str) -> None:
    """Assert the app never called these ComfyUI routes ("POST /prompt"), and withdraw their
    registered answers (the fake otherwise fails the test for answers nobody asked for)."""
    for route in routes:
        method, path = route.split(" ", 1)
        calls = [
            c
            for c in mock.calls
            if c.request.method == method
            and urlsplit(c.request.url).path == path
            and not isinstance(c.response, Exception)  # answered, not refused as unregistered
        ]
        assert not calls, f"{route} was called"
        mock.remove(method, f"{COMFY}{path}")


def object_info(*classes: str) -> dict:
    """A minimal /object_info answer listing the given node classes."""
    return {name: {"input": {"required": {}}, "output": []} for name in classes}


def waited_job_ends(app, client, fake_comfy, status, late=False, headers=None, **ending):
    """POST /api/generate?wait= whose job ends (as the tracker records it) while ComfyUI is
    still answering the submission: the answer is that end. `late`: two hours after it was
    created, past its deadline. `headers`: the submission's."""
    store = app.extensions["sidecar"].store
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330())

    def accept(request):
        (job,) = store.unfinished()
        at = time.time() + (7200 if late else 0)
        with mock.patch("api.sqlite_store.time.time", return_value=at):
            store.finish(job.id, status, **ending)
        prompt_id = json.loads(request.body).get("prompt_id", "p-1")
        return 200, {}, json.dumps({"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    fake_comfy.add_callback("POST", f"{COMFY}/prompt", callback=accept)
    body = {"prompt": "x", "workflow": "pipeline_check", "timeout_minutes": 1}
    return client.post("/api/generate?wait=5", json=body, headers=headers)
