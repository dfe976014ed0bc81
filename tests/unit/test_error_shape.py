"""Every error path answers with the one error shape (the way datasette's test_error_shape does).

Each case below provokes one error over HTTP against the app with a fake ComfyUI; every answer
must carry `error` (a string for people), `code` (a word for programs), `request_id` and
`timestamp`, with the status and code the case names. A last test checks that every error class
the app maps to a status is provoked by some case, so a new error cannot skip the sweep.
"""

import errno
import io
from datetime import datetime
from unittest import mock

import pytest
import requests

from api import create_app, errors
from api import exceptions as exc
from api.job import JobStatus
from tests.support.images import png_bytes
from tests.support.jobs import add_job
from tests.support.object_info import object_info_0330
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config, waited_job_ends

ACCEPTED = {"prompt_id": "p-1", "number": 1, "node_errors": {}}
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "MfKQ9r8GKYo="
REJECTED = {
    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed"},
    "node_errors": {
        "3": {
            "class_type": "KSampler",
            "errors": [
                {"type": "value_bigger_than_max", "message": "Value too big", "details": ""}
            ],
        }
    },
}


def app_with(tmp_path, workflows_dir, fake_comfy, **settings):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    return create_app(make_config(tmp_path, workflows_dir, **settings))


def finished_job(app, job_id="done", outputs=None):
    store = app.extensions["sidecar"].store
    add_job(store, job_id, f"p-{job_id}", submitted=True)
    store.finish(job_id, JobStatus.COMPLETED, outputs or [])
    return job_id


def with_image(app, tmp_path):
    output = app.extensions["sidecar"].config.comfyui_output_dir
    output.mkdir(parents=True, exist_ok=True)
    (output / "a.png").write_bytes(png_bytes())
    image = {"filename": "a.png", "subfolder": "", "type": "output", "node_id": "9"}
    return finished_job(app, "pic", [image])


def upload(client, data: bytes, name: str = "x.png"):
    return client.post(
        "/api/upload",
        data={"image": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def save_on_a_failing_disk(app, client, tmp_path, error: OSError):
    """A save whose write fails: the answer says why, and nothing is left half-written."""
    job_id = with_image(app, tmp_path)
    output = app.extensions["sidecar"].config.comfyui_output_dir
    with mock.patch("api.saving.shutil.copyfileobj", side_effect=error):
        response = client.post(f"/api/save/{job_id}", json={"filename": "x"})
    assert sorted(p.name for p in output.iterdir()) == ["a.png"]
    return response


def store_down(*args, **kwargs):
    raise exc.StoreUnavailable("the job database is not answering (connection refused)")


def save_twice(client, job_id: str):
    client.post(f"/api/save/{job_id}", json={"filename": "same"})
    return client.post(f"/api/save/{job_id}", json={"filename": "same"})


def reuse_idempotency_key(client, fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330())
    fake_comfy.post(f"{COMFY}/prompt", json=ACCEPTED)
    key = {"Idempotency-Key": "k1"}
    first = client.post(
        "/api/generate", json={"prompt": "one", "workflow": "pipeline_check"}, headers=key
    )
    assert first.status_code == 202, first.get_json()
    return client.post(
        "/api/generate", json={"prompt": "two", "workflow": "pipeline_check"}, headers=key
    )


# Each case: (name, settings for the app, provoke(app, client, fake_comfy, tmp_path), status, code)
CASES = [
    ("no body", {}, lambda a, c, f, t: c.post("/api/generate"), 400, "invalid_request"),
    (
        "empty prompt",
        {},
        lambda a, c, f, t: c.post("/api/generate", json={"prompt": ""}),
        400,
        "invalid_request",
    ),
    (
        "unknown workflow",
        {},
        lambda a, c, f, t: c.post("/api/generate", json={"prompt": "x", "workflow": "nope"}),
        400,
        "unknown_workflow",
    ),
    (
        "image of a job that does not exist",
        {},
        lambda a, c, f, t: c.post(
            "/api/generate",
            json={"prompt": "x", "workflow": "flux2_turbo_edit", "images": ["job:nope"]},
        ),
        400,
        "invalid_image",
    ),
    (
        "graph that is a UI workflow",
        {"raw_graphs_enabled": True},
        lambda a, c, f, t: c.post(
            "/api/workflows/execute", json={"workflow": {"nodes": [], "links": []}}
        ),
        400,
        "invalid_graph",
    ),
    (
        "image path leaving the folder",
        {},
        lambda a, c, f, t: c.get("/api/image/a.png?subfolder=../x"),
        400,
        "invalid_path",
    ),
    (
        "save name with a separator",
        {},
        lambda a, c, f, t: c.post(f"/api/save/{finished_job(a)}", json={"filename": "a/b"}),
        400,
        "invalid_filename",
    ),
    (
        "unknown sampler",
        {},
        lambda a, c, f, t: (
            f.get(f"{COMFY}/object_info", json=object_info_0330()),
            c.post("/api/generate", json={"prompt": "x", "sampler": "nope"}),
        )[1],
        400,
        "unknown_sampler",
    ),
    ("empty upload", {}, lambda a, c, f, t: upload(c, b""), 400, "invalid_request"),
    (
        "bad limit",
        {},
        lambda a, c, f, t: c.get("/api/jobs?limit=0"),
        400,
        "invalid_request",
    ),
    (
        "no key",
        {"api_keys": "k" * 20},
        lambda a, c, f, t: c.get("/api/jobs"),
        401,
        "unauthorized",
    ),
    (
        "read key on an admin endpoint",
        {"api_keys": "r" * 20 + ":read"},
        lambda a, c, f, t: c.post("/api/queue/clear", headers={"X-API-Key": "r" * 20}),
        403,
        "forbidden",
    ),
    (
        "a caller on another machine without API keys",
        {},
        lambda a, c, f, t: c.get("/api/jobs", environ_base={"REMOTE_ADDR": "203.0.113.9"}),
        403,
        "not_local",
    ),
    (
        "a host name that is not ours (DNS rebinding)",
        {},
        lambda a, c, f, t: c.get("/api/jobs", headers={"Host": "rebind.attacker.example"}),
        403,
        "host_not_allowed",
    ),
    (
        "a write sent by another site's page",
        {},
        lambda a, c, f, t: c.post(
            "/api/queue/clear", headers={"Origin": "https://attacker.example"}
        ),
        403,
        "cross_site_request",
    ),
    (
        "raw graphs switched off",
        {},
        lambda a, c, f, t: c.post("/api/workflows/execute", json={"workflow": {}}),
        403,
        "raw_graphs_disabled",
    ),
    (
        "webhook_url while the server has no WEBHOOK_SECRET",
        {},
        lambda a, c, f, t: (
            f.get(f"{COMFY}/object_info", json=object_info_0330()),
            c.post(
                "/api/generate",
                json={
                    "prompt": "x",
                    "workflow": "pipeline_check",
                    "webhook_url": "https://hooks.example.com/x",
                },
            ),
        )[1],
        403,
        "webhooks_disabled",
    ),
    (
        "webhook_url at a private address",
        {"webhook_secret": SECRET, "raw_graphs_enabled": True},
        lambda a, c, f, t: c.post(
            "/api/workflows/execute",
            json={
                "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                "webhook_url": "http://169.254.169.254/latest",
            },
        ),
        400,
        "webhook_url_refused",
    ),
    (
        "a batch with one bad item",
        {},
        lambda a, c, f, t: (
            f.get(f"{COMFY}/object_info", json=object_info_0330()),
            c.post(
                "/api/batch",
                json={"workflow": "pipeline_check", "jobs": [{"prompt": "ok"}, {"prompt": ""}]},
            ),
        )[1],
        400,
        "invalid_batch",
    ),
    ("unknown job", {}, lambda a, c, f, t: c.get("/api/status/nope"), 404, "not_found"),
    ("unknown batch", {}, lambda a, c, f, t: c.get("/api/batch/nope"), 404, "not_found"),
    (
        "deliveries of an unknown job",
        {},
        lambda a, c, f, t: c.get("/api/jobs/nope/deliveries"),
        404,
        "not_found",
    ),
    (
        "a client key reading /metrics",
        {"api_keys": "g" * 20 + ":generate"},
        lambda a, c, f, t: c.get("/metrics", headers={"X-API-Key": "g" * 20}),
        403,
        "forbidden",
    ),
    ("unknown route", {}, lambda a, c, f, t: c.get("/api/nope"), 404, "not_found"),
    (
        "wrong method",
        {},
        lambda a, c, f, t: c.put("/api/generate"),
        405,
        "method_not_allowed",
    ),
    (
        "cancel a finished job",
        {},
        lambda a, c, f, t: c.delete(f"/api/queue/{finished_job(a)}"),
        409,
        "already_finished",
    ),
    (
        "save under a taken name",
        {},
        lambda a, c, f, t: save_twice(c, with_image(a, t)),
        409,
        "name_taken",
    ),
    (
        "body over MAX_REQUEST_MB",
        {"max_request_mb": 0.001},
        lambda a, c, f, t: c.post("/api/generate", json={"prompt": "x" * 5000}),
        413,
        "request_entity_too_large",
    ),
    (
        "upload over MAX_UPLOAD_MB",
        {"max_upload_mb": 0.0001},
        lambda a, c, f, t: upload(c, png_bytes() + b"\0" * 2000),
        413,
        "upload_too_large",
    ),
    (
        "a form where JSON is expected",
        {},
        lambda a, c, f, t: c.post("/api/queue/clear", data={"include_running": "true"}),
        415,
        "unsupported_media_type",
    ),
    (
        "upload that is not an image",
        {},
        lambda a, c, f, t: upload(c, b"<svg/>", "x.svg"),
        415,
        "unsupported_media_type",
    ),
    (
        "a Range past the end of an image",
        {},
        lambda a, c, f, t: (
            with_image(a, t),
            c.get("/api/image/a.png", headers={"Range": "bytes=999999-"}),
        )[1],
        416,
        "requested_range_not_satisfiable",
    ),
    (
        "unusable workflow",
        {},
        lambda a, c, f, t: (
            (t / "workflows" / "broken.json").write_text("{not json"),
            c.get("/api/workflows/broken"),
        )[1],
        422,
        "workflow_invalid",
    ),
    (
        "Idempotency-Key reused for another request",
        {},
        lambda a, c, f, t: reuse_idempotency_key(c, f),
        422,
        "idempotency_key_reused",
    ),
    (
        "ComfyUI rejects the graph",
        {},
        lambda a, c, f, t: (
            f.get(f"{COMFY}/object_info", json=object_info_0330()),
            f.post(f"{COMFY}/prompt", status=400, json=REJECTED),
            c.post("/api/generate", json={"prompt": "x", "workflow": "pipeline_check"}),
        )[2],
        422,
        "comfyui_rejected",
    ),
    (
        "plain HTTP to a WebSocket",
        {},
        lambda a, c, f, t: c.get("/ws/progress/x"),
        426,
        "upgrade_required",
    ),
    (
        "past the rate limit",
        {"rate_limit": "1/minute"},
        lambda a, c, f, t: (c.get("/api/jobs"), c.get("/api/jobs"))[1],
        429,
        "too_many_requests",
    ),
    (
        "MAX_UNFINISHED_JOBS reached",
        {"max_unfinished_jobs": 0},
        lambda a, c, f, t: c.post("/api/generate", json={"prompt": "x"}),
        429,
        "too_many_jobs",
    ),
    (
        "too many wrong API keys from one address",
        {"api_keys": "k" * 20, "auth_failure_limit": "2/minute"},
        lambda a, c, f, t: [c.get("/api/jobs", headers={"X-API-Key": "w" * 20}) for _ in range(3)][
            -1
        ],
        429,
        "too_many_auth_failures",
    ),
    (
        "every watcher slot taken",
        {"max_watchers": 1},
        lambda a, c, f, t: (
            # A job still running: the long poll would wait (a final one answers at once).
            add_job(a.extensions["sidecar"].store, "open", "p-open", submitted=True),
            a.extensions["sidecar"].watchers.acquire(),
            c.get("/api/status/open?wait=1"),
        )[2],
        429,
        "too_many_watchers",
    ),
    (
        "a WebSocket on a server that cannot hand over the connection",
        {},
        lambda a, c, f, t: c.get(
            f"/ws/progress/{finished_job(a)}",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ),
        501,
        "websocket_unsupported",
    ),
    (
        "the output folder is not writable",
        {},
        lambda a, c, f, t: save_on_a_failing_disk(
            a, c, t, PermissionError(errno.EACCES, "Permission denied")
        ),
        507,
        "output_not_writable",
    ),
    (
        "the disk is full",
        {},
        lambda a, c, f, t: save_on_a_failing_disk(
            a, c, t, OSError(errno.ENOSPC, "No space left on device")
        ),
        507,
        "storage_full",
    ),
    (
        "the disk fails",
        {},
        lambda a, c, f, t: save_on_a_failing_disk(a, c, t, OSError(errno.EIO, "I/O error")),
        507,
        "storage_error",
    ),
    (
        "ComfyUI answers 500",
        {},
        lambda a, c, f, t: (
            f.replace("GET", f"{COMFY}/system_stats", status=500, body="boom"),
            c.get("/api/system"),
        )[1],
        502,
        "comfyui_error",
    ),
    (
        "ComfyUI down",
        {},
        lambda a, c, f, t: (
            f.replace("GET", f"{COMFY}/system_stats", body=requests.ConnectionError("down")),
            c.get("/api/system"),
        )[1],
        503,
        "comfyui_unreachable",
    ),
    (
        "readiness probe while ComfyUI is down",
        {},
        lambda a, c, f, t: (
            f.replace("GET", f"{COMFY}/system_stats", body=requests.ConnectionError("down")),
            c.get("/api/health"),
        )[1],
        503,
        "unhealthy",
    ),
    (
        "the job store does not answer",
        {},
        lambda a, c, f, t: (
            setattr(a.extensions["sidecar"].store, "page", store_down),
            c.get("/api/jobs"),
        )[1],
        503,
        "store_unavailable",
    ),
    (
        "ComfyUI too slow",
        {},
        lambda a, c, f, t: (
            f.replace("GET", f"{COMFY}/system_stats", body=requests.ReadTimeout("slow")),
            c.get("/api/system"),
        )[1],
        504,
        "comfyui_timeout",
    ),
    (
        "a job waited for fails",
        {},
        lambda a, c, f, t: waited_job_ends(a, c, f, JobStatus.FAILED, error="boom"),
        500,
        "job_failed",
    ),
    (
        "a job waited for reaches its deadline",
        {},
        lambda a, c, f, t: waited_job_ends(
            a, c, f, JobStatus.FAILED, late=True, error="Job timed out after 1 minutes"
        ),
        504,
        "job_timed_out",
    ),
    (
        "a job waited for has no image to answer with",
        {},
        lambda a, c, f, t: waited_job_ends(
            a, c, f, JobStatus.COMPLETED, headers={"Accept": "image/png"}, outputs=[]
        ),
        406,
        "no_image",
    ),
    (
        "a job waited for is cancelled",
        {},
        lambda a, c, f, t: waited_job_ends(a, c, f, JobStatus.CANCELLED),
        409,
        "job_cancelled",
    ),
    (
        "ComfyUI does not confirm a submission",
        {},
        lambda a, c, f, t: (
            f.get(f"{COMFY}/object_info", json=object_info_0330()),
            f.post(f"{COMFY}/prompt", body=requests.ReadTimeout("slow")),
            c.post("/api/generate", json={"prompt": "x", "workflow": "pipeline_check"}),
        )[2],
        504,
        "comfyui_timeout",
    ),
]


def check_shape(response, status: int, code: str) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    assert response.mimetype == "application/json"
    assert isinstance(body["error"], str) and body["error"]
    assert body["code"] == code
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert response.headers["X-Request-ID"] == body["request_id"]
    return body


@pytest.mark.parametrize(
    ("settings", "provoke", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_error_has_the_one_shape(
    tmp_path, workflows_dir, fake_comfy, settings, provoke, status, code
):
    app = app_with(tmp_path, workflows_dir, fake_comfy, **settings)
    response = provoke(app, app.test_client(), fake_comfy, tmp_path)
    body = check_shape(response, status, code)
    if status == 503 and code == "unhealthy":
        assert body["status"] == "unhealthy"  # the primary API's probe field, beside the shape


def test_an_unexpected_failure_is_a_500_in_the_same_shape(app, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app.extensions["sidecar"].store, "page", broken)
    body = check_shape(client.get("/api/jobs"), 500, "internal_error")
    assert "disk on fire" not in body["error"]  # internals stay in the log


def test_every_mapped_error_class_is_swept():
    """A class the app maps to a status but no case provokes would escape this sweep."""
    swept = {(c[3], c[4]) for c in CASES}
    for cls, status in errors.STATUS.items():
        if cls in (exc.UnknownChoice,):  # provoked as unknown_sampler (its code names the kind)
            assert (400, "unknown_sampler") in swept
            continue
        assert (status, cls.code) in swept, f"{cls.__name__} ({status} {cls.code}) is not swept"
