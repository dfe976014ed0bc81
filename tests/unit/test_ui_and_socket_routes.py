"""The page's routes and static files, and the progress socket's HTTP answers and messages."""

import re

import pytest

from api.job import JobStatus
from api.routes import progress
from api.routes.ui import STATIC
from tests.support.jobs import add_job
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.mark.parametrize("path", ["/", "/ui/"])
def test_the_page_is_served_at_the_root_and_under_ui(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert b'<form id="generate-form"' in response.data
    assert response.headers["Cache-Control"] == "no-cache"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy


def test_ui_without_slash_redirects_relatively(client):
    response = client.get("/ui")
    assert response.status_code == 308
    assert response.headers["Location"] == "ui/"


@pytest.mark.parametrize("prefix", ["/static/", "/ui/static/"])
def test_assets_are_served_next_to_both_pages(client, prefix):
    script = client.get(prefix + "app.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert client.get(prefix + "app.css").mimetype == "text/css"
    assert client.get(prefix + "nope.js").status_code == 404


def test_every_url_in_the_page_is_relative_and_local():
    """The page works under any prefix and needs no other site (no CDN)."""
    html = (STATIC / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not url.startswith(("/", "http:", "https:", "//")), url
        if not url.startswith("#"):
            assert (STATIC / url.removeprefix("static/")).is_file(), url
    for path in STATIC.glob("*.js"):
        source = path.read_text()
        imports = re.findall(r'from "([^"]+)"', source)
        assert all(i.startswith("./") and (STATIC / i[2:]).is_file() for i in imports), imports
        assert "http://" not in source.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in source
        # User data (prompts, file names, errors) only ever goes in as text.
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source
        assert re.search(r'fetch\(\s*"/|EventSource\(\s*"/', source) is None, path.name


def test_the_socket_url_over_plain_http_is_426(client):
    response = client.get("/ws/progress/anything")
    assert response.status_code == 426
    assert response.get_json()["code"] == "upgrade_required"


def test_the_socket_of_an_unknown_job_is_refused_before_the_handshake(client):
    response = client.get("/ws/progress/nope", headers=HANDSHAKE)
    assert response.status_code == 404
    assert response.get_json()["error"] == "Job not found"


def test_the_socket_counts_against_the_watcher_cap(tmp_path, workflows_dir, fake_comfy):
    from api import create_app

    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    app = create_app(make_config(tmp_path, workflows_dir, max_watchers=1))
    services = app.extensions["sidecar"]
    add_job(services.store, "j1", "p1")
    services.watchers.acquire()  # an event stream holds the only place
    try:
        response = app.test_client().get("/ws/progress/j1", headers=HANDSHAKE)
    finally:
        services.watchers.release()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    # With the place free, the handshake goes ahead (this test server has no raw socket: 501).
    assert app.test_client().get("/ws/progress/j1", headers=HANDSHAKE).status_code == 501


def test_a_handshake_without_a_key_is_400(app):
    add_job(app.extensions["sidecar"].store, "j1", "p1")
    headers = {k: v for k, v in HANDSHAKE.items() if k != "Sec-WebSocket-Key"}
    assert app.test_client().get("/ws/progress/j1", headers=headers).status_code == 400


def test_progress_messages_have_the_generation_servers_shape(app):
    store = app.extensions["sidecar"].store
    add_job(store, "j1", "p1", prompt="a fox", params={"seed": 1})

    def message():
        with app.test_request_context():
            return progress.message(store.get("j1"))

    assert message() == {
        "job_id": "j1",
        "status": "queued",
        "progress": 0.0,
        "step": 0,
        "max_steps": None,
        "message": "Queued",
        "image_url": None,
        "error": None,
    }
    store.set_queue_positions({"p1": 2})
    assert message()["message"] == "Queued (position 2)"
    store.record_progress("p1", 3, 8, "13")
    assert message() | {"job_id": "j1"} == {
        "job_id": "j1",
        "status": "processing",
        "progress": 0.375,
        "step": 3,
        "max_steps": 8,
        "message": "Step 3 of 8",
        "image_url": None,
        "error": None,
    }
    image = {"filename": "fox.png", "subfolder": "", "type": "output", "node_id": "9"}
    store.finish("j1", JobStatus.COMPLETED, [image])
    done = message()
    assert (done["status"], done["progress"], done["message"]) == ("completed", 1.0, "Completed")
    assert done["image_url"] == "/api/image/fox.png"


def test_a_failed_job_says_why(app):
    store = app.extensions["sidecar"].store
    add_job(store, "j2", "p2")
    store.finish("j2", JobStatus.FAILED, error="KSampler (node 3) raised RuntimeError: boom")
    with app.test_request_context():
        body = progress.message(store.get("j2"))
    assert body["message"] == "Failed: KSampler (node 3) raised RuntimeError: boom"
    assert body["error"].endswith("boom")
