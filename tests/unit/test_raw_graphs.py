"""POST /api/workflows/execute, and the timeout_minutes deadline the tracker enforces."""

import json
import time

import pytest

from api import create_app
from api.comfyui import ComfyUIClient
from api.config import Config
from api.job import JobStatus
from api.sqlite_store import SQLiteJobStore
from api.tracker import Tracker
from tests.support.jobs import add_job
from tests.support.object_info import exported
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config, object_info

SD15_CLASSES = [node["class_type"] for node in exported("sd15_basic").values()]


@pytest.fixture
def raw_client(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    app = create_app(make_config(tmp_path, workflows_dir, raw_graphs_enabled=True))
    return app.test_client()


def test_switched_off_by_default_with_the_error_shape(client, fake_comfy):
    response = client.post("/api/workflows/execute", json={"workflow": exported("sd15_basic")})
    assert response.status_code == 403
    body = response.get_json()
    assert body["code"] == "raw_graphs_disabled"
    assert "RAW_GRAPHS_ENABLED=true" in body["error"]
    assert {"request_id", "timestamp"} <= set(body)
    assert not [c for c in fake_comfy.calls if c.request.url.endswith("/prompt")]


def test_a_raw_graph_is_queued_with_priority_and_metadata(raw_client, fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info(*SD15_CLASSES))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-7", "number": -3, "node_errors": {}})
    graph = exported("sd15_basic")
    response = raw_client.post(
        "/api/workflows/execute",
        json={
            "workflow": graph,
            "priority": "high",
            "metadata": {"customer": "a", "batch": 7},
            "timeout_minutes": 15,
        },
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued" and body["prompt_id"] == "p-7"
    assert body["priority"] == "high" and body["metadata"] == {"customer": "a", "batch": 7}
    assert body["prompt"] == graph["6"]["inputs"]["text"]
    assert response.headers["Location"] == f"/api/status/{body['job_id']}"
    (call,) = [c for c in fake_comfy.calls if c.request.url.endswith("/prompt")]
    sent = json.loads(call.request.body)
    assert sent["front"] is True
    assert sent["prompt"] == graph
    status = raw_client.get(body["status_url"]).get_json()
    assert status["metadata"] == {"customer": "a", "batch": 7}
    assert status["timeout_minutes"] == 15 and status["priority"] == "high"
    assert status["workflow"] == "(raw graph)"


def test_normal_priority_goes_to_the_back_of_the_queue(raw_client, fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info(*SD15_CLASSES))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-8", "number": 4, "node_errors": {}})
    response = raw_client.post("/api/workflows/execute", json={"workflow": exported("sd15_basic")})
    assert response.status_code == 202
    (call,) = [c for c in fake_comfy.calls if c.request.url.endswith("/prompt")]
    assert "front" not in json.loads(call.request.body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing required field: workflow"),
        ({"workflow": {}}, "workflow: {} should be non-empty"),
        ({"workflow": {"nodes": [], "links": []}}, "workflow is a UI workflow"),
        ({"workflow": {"1": {"inputs": {}}}}, "workflow: node '1' has no class_type"),
        ({"workflow": {"1": {"class_type": "X"}}, "priority": "urgent"}, "priority: 'urgent'"),
        ({"workflow": {"1": {"class_type": "X"}}, "timeout_minutes": 0}, "timeout_minutes: 0"),
        ({"workflow": {"1": {"class_type": "X"}}, "metadata": "x"}, "metadata: 'x' is not"),
        ({"workflow": {"1": {"class_type": "X"}}, "callback_url": "x"}, "Unknown field: callback"),
        (
            {"workflow": {"1": {"class_type": "X"}}, "metadata": {"x": "y" * 20000}},
            "metadata is larger than 16 KB",
        ),
    ],
)
def test_bad_bodies_are_a_400(raw_client, fake_comfy, body, message):
    response = raw_client.post("/api/workflows/execute", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message), response.get_json()


def test_missing_node_types_are_a_422_and_leave_no_job(raw_client, fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info("SaveImage"))
    response = raw_client.post("/api/workflows/execute", json={"workflow": exported("sd15_basic")})
    assert response.status_code == 422
    assert "KSampler (node 3)" in response.get_json()["error"]


# --- deadlines --------------------------------------------------------------------------------


@pytest.fixture
def tracker(tmp_path):
    config = Config.from_env({"COMFYUI_HOST": "comfy.test", "WORKSPACE_PATH": str(tmp_path)})
    client = ComfyUIClient(config.comfyui_url, config.comfyui_timeout)
    return Tracker(config, SQLiteJobStore(config.database_path), client, "client-1")


def add(
    store: SQLiteJobStore, job_id: str, prompt_id: str, minutes: float | None, age: float
) -> None:
    options = {} if minutes is None else {"timeout_minutes": minutes}
    created = time.time() - age
    deadline = None if minutes is None else created + minutes * 60
    add_job(
        store,
        job_id,
        prompt_id,
        client_id="client-1",
        workflow="raw",
        prompt="",
        options=options,
        deadline=deadline,
    )
    store.mark_submitted(job_id, prompt_id)
    store._exec("UPDATE jobs SET created_at = ? WHERE id = ?", (time.time() - age, job_id))


def test_a_job_past_its_timeout_is_stopped_in_comfyui_and_failed(tracker, fake_comfy):
    store = tracker.store
    add(store, "running", "p-run", 0.5, age=31)
    add(store, "pending", "p-pend", 0.5, age=31)
    add(store, "young", "p-young", 5, age=31)
    add(store, "forever", "p-forever", None, age=10_000)
    fake_comfy.get(
        f"{COMFY}/queue",
        json={
            "queue_running": [[0, "p-run", {}, {}, []]],
            "queue_pending": [
                [1, "p-pend", {}, {}, []],
                [2, "p-young", {}, {}, []],
                [3, "p-forever", {}, {}, []],
            ],
        },
    )
    fake_comfy.post(f"{COMFY}/api/jobs/p-run/cancel", status=404)  # an older server
    interrupt = fake_comfy.post(f"{COMFY}/interrupt")
    delete = fake_comfy.post(f"{COMFY}/queue")

    tracker.reconcile_once()

    for job_id in ("running", "pending"):
        job = store.get(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error == "Job timed out after 0.5 minutes"
    assert store.get("young").status == store.get("forever").status == JobStatus.QUEUED
    assert json.loads(interrupt.calls[0].request.body) == {"prompt_id": "p-run"}
    assert json.loads(delete.calls[0].request.body) == {"delete": ["p-pend"]}
    # ComfyUI's own report of the interruption does not turn the timeout into "cancelled".
    tracker.handle_event("execution_interrupted", {"prompt_id": "p-run"})
    assert store.get("running").status == JobStatus.FAILED
