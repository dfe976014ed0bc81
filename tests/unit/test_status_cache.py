"""Job statuses carry validators, and those that can no longer change may be kept."""

from api import create_app
from api.job import JobStatus
from tests.support.jobs import add_job
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

IMAGE = {"filename": "a_00001_.png", "subfolder": "", "type": "output"}
VIA_NGINX = {"X-Sidecar-Via": "nginx"}


def test_a_status_read_again_unchanged_is_a_304_and_a_change_makes_a_new_etag(app, client):
    store = app.extensions["sidecar"].store
    add_job(store, "j1", "p1", submitted=True)
    first = client.get("/api/status/j1")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"  # still running: ask every time
    again = client.get("/api/status/j1", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    store.record_progress("p1", 1, 4, None)
    moved = client.get("/api/status/j1", headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.get_json()["current_step"] == 1
    assert moved.headers["ETag"] != etag


def test_a_final_status_may_be_kept_by_the_client_and_by_nginx_only(app, client):
    store = app.extensions["sidecar"].store
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [IMAGE])
    direct = client.get("/api/status/j1")
    assert direct.headers["Cache-Control"] == "private, max-age=30"
    assert "X-Accel-Expires" not in direct.headers
    behind = client.get("/api/status/j1", headers=VIA_NGINX)
    assert behind.headers["X-Accel-Expires"] == "30"


def test_a_final_status_whose_copy_is_not_saved_yet_is_not_kept(app, client):
    store = app.extensions["sidecar"].store
    add_job(store, "j1", "p1", submitted=True, options={"save_to_disk": True})
    store.finish("j1", JobStatus.COMPLETED, [IMAGE])
    waiting = client.get("/api/status/j1", headers=VIA_NGINX)
    assert waiting.headers["Cache-Control"] == "no-cache"
    assert "X-Accel-Expires" not in waiting.headers
    store.record_option("j1", "saved_as", "mine.png")
    saved = client.get("/api/status/j1", headers=VIA_NGINX)
    assert saved.headers["X-Accel-Expires"] == "30"
    assert saved.headers["ETag"] != waiting.headers["ETag"]


def test_status_cache_seconds_0_keeps_nothing(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    app = create_app(make_config(tmp_path, workflows_dir, status_cache_seconds=0))
    store = app.extensions["sidecar"].store
    add_job(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.FAILED, error="x")
    answer = app.test_client().get("/api/status/j1", headers=VIA_NGINX)
    assert answer.headers["Cache-Control"] == "no-cache"
    assert "X-Accel-Expires" not in answer.headers and answer.headers["ETag"]
