"""Batches, /metrics and the idle unload against a fake ComfyUI."""

import io
import json
import zipfile
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.idle import IdleUnloader
from api.job import JobStatus
from tests.support.images import png_bytes
from tests.support.jobs import add_job
from tests.support.object_info import object_info_0330
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

QUICK = {"workflow": "pipeline_check", "width": 64, "height": 64}
EMPTY_QUEUE = {"queue_running": [], "queue_pending": []}


def accept_prompts(fake_comfy):
    """ComfyUI takes every prompt under the prompt_id the sidecar chose (as new servers do)."""
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330())

    def accept(request):
        prompt_id = json.loads(request.body)["prompt_id"]
        return 200, {}, json.dumps({"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    fake_comfy.add_callback("POST", f"{COMFY}/prompt", callback=accept)


def prompts_sent(fake_comfy) -> list[dict]:
    return [c for c in fake_comfy.calls if urlsplit(c.request.url).path == "/prompt"]


def test_a_batch_of_prompts_queues_one_job_each_with_the_shared_fields(client, fake_comfy):
    accept_prompts(fake_comfy)
    answer = client.post("/api/batch", json={"prompts": ["a", "b", "c"], **QUICK, "seed": 7})
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert body["total"] == 3 and body["status"] == "queued"
    assert answer.headers["Location"] == body["status_url"]
    assert len(prompts_sent(fake_comfy)) == 3
    shown = client.get(body["status_url"]).get_json()
    assert [j["prompt"] for j in shown["jobs"]] == ["a", "b", "c"]
    assert shown["counts"]["queued"] == 3 and shown["status"] == "queued"
    status = client.get(f"/api/status/{body['job_ids'][0]}").get_json()
    assert status["parameters"]["seed"] == 7 and status["options"]["batch_id"] == body["batch_id"]


def test_one_bad_item_queues_nothing_and_is_named(client, fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330())
    answer = client.post(
        "/api/batch", json={"jobs": [{"prompt": "ok"}, {"prompt": "ok", "steps": "x"}], **QUICK}
    )
    body = answer.get_json()
    assert answer.status_code == 400 and body["code"] == "invalid_batch", body
    assert body["details"]["index"] == 1 and "Item 1" in body["error"]
    assert prompts_sent(fake_comfy) == []
    assert client.get("/api/jobs").get_json()["total"] == 0


def test_batch_shapes_that_are_refused(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    client = create_app(make_config(tmp_path, workflows_dir, max_batch_size=2)).test_client()
    for bad in (
        {},
        {"prompts": []},
        {"prompts": ["a"], "jobs": [{}]},
        {"prompts": ["a", "b", "c"]},
        {"prompts": [1]},
        {"jobs": ["a"]},
    ):
        answer = client.post("/api/batch", json={**bad, **QUICK})
        assert answer.status_code == 400, (bad, answer.get_json())


def test_an_idempotency_key_replays_the_batch(client, fake_comfy):
    accept_prompts(fake_comfy)
    key = {"Idempotency-Key": "batch-1"}
    first = client.post("/api/batch", json={"prompts": ["a"], **QUICK}, headers=key).get_json()
    again = client.post("/api/batch", json={"prompts": ["a"], **QUICK}, headers=key).get_json()
    assert again["batch_id"] == first["batch_id"] and again["replayed"] is True
    assert len(prompts_sent(fake_comfy)) == 1
    other = client.post("/api/batch", json={"prompts": ["b"], **QUICK}, headers=key)
    assert other.status_code == 422


def test_the_archive_holds_the_finished_images_in_batch_order(app, client, fake_comfy):
    accept_prompts(fake_comfy)
    body = client.post("/api/batch", json={"prompts": ["a", "b", "c"], **QUICK}).get_json()
    s = app.extensions["sidecar"]
    s.config.comfyui_output_dir.mkdir(parents=True, exist_ok=True)
    for number, job_id in enumerate(body["job_ids"][:2]):
        name = f"img_{number}.png"
        (s.config.comfyui_output_dir / name).write_bytes(png_bytes() + bytes([number]))
        image = {"filename": name, "subfolder": "", "type": "output", "node_id": "2"}
        s.store.finish(job_id, JobStatus.COMPLETED, [image])
    shown = client.get(body["status_url"]).get_json()
    assert shown["status"] == "processing" and shown["counts"]["completed"] == 2
    archive = client.get(body["archive_url"])
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    members = zipfile.ZipFile(io.BytesIO(archive.data))
    assert members.namelist() == ["001_img_0.png", "002_img_1.png"]
    assert members.read("002_img_1.png") == png_bytes() + b"\x01"


def test_cancelling_a_batch_cancels_its_unfinished_jobs(app, client, fake_comfy):
    accept_prompts(fake_comfy)
    body = client.post("/api/batch", json={"prompts": ["a", "b"], **QUICK}).get_json()
    first, second = body["job_ids"]
    app.extensions["sidecar"].store.finish(first, JobStatus.COMPLETED, [])
    prompt_id = client.get(f"/api/status/{second}").get_json()["prompt_id"]
    fake_comfy.get(
        f"{COMFY}/queue", json={"queue_running": [], "queue_pending": [[2, prompt_id, {}, {}, []]]}
    )
    fake_comfy.post(f"{COMFY}/queue", json={})
    answer = client.delete(body["status_url"]).get_json()
    assert answer["cancelled"] == [second] and answer["already_finished"] == [first]
    assert client.get(body["status_url"]).get_json()["status"] == "cancelled"


# --- /metrics -----------------------------------------------------------------------------------


def samples(client) -> dict:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_nginxs_image_checks_are_not_counted_as_requests(client):
    route = "/api/image/<path:filename>"
    client.get("/api/image/none.png", headers={"X-Sidecar-Check": "caller"})  # a yes: 200
    client.get("/api/image/none.png", headers={"X-Sidecar-Check": "image"})  # a no: 403
    client.get("/api/image/none.png")  # a client's own request: 404
    counted = {
        dict(labels)["status"]: value
        for (name, labels), value in samples(client).items()
        if name == "sidecar_http_requests_total" and dict(labels)["route"] == route
    }
    assert counted == {"404": 1}


def test_metrics_count_jobs_requests_and_read_the_store(app, client, fake_comfy):
    accept_prompts(fake_comfy)
    client.post("/api/generate", json={"prompt": "m", **QUICK})
    client.get("/api/status/nope")
    found = samples(client)
    assert found[("sidecar_jobs_created_total", (("workflow", "pipeline_check"),))] == 1
    assert found[("sidecar_jobs_unfinished", (("state", "queued"),))] == 1
    route = (("method", "GET"), ("route", "/api/status/<job_id>"), ("status", "404"))
    assert found[("sidecar_http_requests_total", route)] == 1
    job = client.get("/api/jobs").get_json()["jobs"][0]
    finisher = app.extensions["sidecar"].finisher
    finisher.finish(app.extensions["sidecar"].store.get(job["job_id"]), JobStatus.FAILED)
    found = samples(client)
    key = (("status", "failed"), ("workflow", "pipeline_check"))
    assert found[("sidecar_jobs_finished_total", key)] == 1
    assert found[("sidecar_jobs_unfinished", (("state", "queued"),))] == 0


# --- idle unload --------------------------------------------------------------------------------


def test_idle_unload_once_per_idle_period_never_while_busy(app, fake_comfy):
    s = app.extensions["sidecar"]
    idle = IdleUnloader(1, s.store, s.client)  # one minute
    start = idle.started
    assert idle.check(now=start + 30) is False  # not idle long enough
    add_job(s.store, "j1", "p1", submitted=True)
    assert idle.check(now=start + 3600) is False  # a job is unfinished
    s.store.finish("j1", JobStatus.COMPLETED, [])
    ended = s.store.get("j1").finished_at
    fake_comfy.get(
        f"{COMFY}/queue", json={"queue_running": [[1, "other", {}, {}, []]], "queue_pending": []}
    )
    assert idle.check(now=ended + 61) is False  # another client's prompt runs in ComfyUI
    fake_comfy.replace("GET", f"{COMFY}/queue", json=EMPTY_QUEUE)
    assert idle.check(now=ended + 61 + 30) is False  # a whole period after ComfyUI was busy
    fake_comfy.post(f"{COMFY}/free", json={})
    assert idle.check(now=ended + 61 + 61) is True
    assert idle.check(now=ended + 61 + 600) is False  # this idle period is handled
    again = IdleUnloader(1, s.store, s.client)  # a restarted sidecar knows it too
    assert again.check(now=ended + 61 + 600) is False
    frees = [c for c in fake_comfy.calls if urlsplit(c.request.url).path == "/free"]
    assert len(frees) == 1
    assert b'"unload_models": true' in frees[0].request.body


def test_webhook_bodies_name_images_as_the_api_does(app):
    """The outbox builds image URLs outside any request: the same as the routes' url_for."""
    from api.job import image_path
    from api.routes.images import image_url

    with app.test_request_context():
        for image in (
            {"filename": "a b#1.png", "subfolder": ""},
            {"filename": "x.png", "subfolder": "sub/dir"},
        ):
            assert image_path(image) == image_url(image)
