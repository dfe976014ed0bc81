"""POST /api/generate and GET /api/status against a fake ComfyUI."""

import json
import time

import pytest
import requests

from api import create_app
from api.job import JobStatus
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config, object_info, waited_job_ends

FLUX_CLASSES = (
    "UNETLoader",
    "LoraLoaderModelOnly",
    "CLIPLoader",
    "VAELoader",
    "CLIPTextEncode",
    "FluxGuidance",
    "BasicGuider",
    "KSamplerSelect",
    "Flux2Scheduler",
    "EmptyFlux2LatentImage",
    "RandomNoise",
    "SamplerCustomAdvanced",
    "VAEDecode",
    "SaveImage",
)

# What ComfyUI answers for the FLUX.2 graph when the model folders are empty (protocol §4.1).
MISSING_MODELS = {
    "error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    },
    "node_errors": {
        "12": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "unet_name: 'flux2_dev_fp8mixed.safetensors' not in []",
                    "extra_info": {
                        "input_name": "unet_name",
                        "input_config": [[], {}],
                        "received_value": "flux2_dev_fp8mixed.safetensors",
                    },
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "UNETLoader",
        },
        "101": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "lora_name: 'Flux_2-Turbo-LoRA_comfyui.safetensors' not in []",
                    "extra_info": {
                        "input_name": "lora_name",
                        "input_config": [[], {}],
                        "received_value": "Flux_2-Turbo-LoRA_comfyui.safetensors",
                    },
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "LoraLoaderModelOnly",
        },
    },
}


@pytest.fixture
def flux_comfy(fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info(*FLUX_CLASSES))
    return fake_comfy


def submitted_body(mock) -> dict:
    calls = [c for c in mock.calls if c.request.url.endswith("/prompt")]
    assert len(calls) == 1
    return json.loads(calls[0].request.body)


def test_generate_queues_the_default_flux2_template(client, flux_comfy):
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-1", "number": 3, "node_errors": {}})

    response = client.post("/api/generate", json={"prompt": "a red fox", "width": 768})

    assert response.status_code == 202
    body = response.get_json()
    assert {k: body[k] for k in ("prompt_id", "status", "prompt", "message")} == {
        "prompt_id": "p-1",
        "status": "queued",
        "prompt": "a red fox",
        "message": "Image generation queued",
    }
    assert response.headers["Location"] == f"/api/status/{body['job_id']}"
    sent = submitted_body(flux_comfy)
    graph = sent["prompt"]
    assert graph["6"]["inputs"]["text"] == "a red fox"
    assert graph["47"]["inputs"]["width"] == graph["48"]["inputs"]["width"] == 768
    assert graph["47"]["inputs"]["height"] == graph["48"]["inputs"]["height"] == 1024
    assert graph["48"]["inputs"]["steps"] == 8
    assert graph["26"]["inputs"]["guidance"] == 4.0
    assert graph["9"]["inputs"]["filename_prefix"] == "Flux2_Turbo"
    assert graph["25"]["inputs"]["noise_seed"] == body["seed"]
    assert sent["client_id"].startswith("sidecar-")

    # ComfyUI's number for the prompt (its run order) is kept with it.
    assert client.application.extensions["sidecar"].store.get(body["job_id"]).queue_number == 3

    status = client.get(f"/api/status/{body['job_id']}").get_json()
    assert status["status"] == "queued"
    assert status["seed"] == body["seed"]
    assert status["parameters"]["width"] == 768
    for key in (
        "job_id",
        "status",
        "prompt",
        "progress",
        "current_step",
        "total_steps",
        "output_image",
        "error",
        "created_at",
    ):
        assert key in status


def test_every_parameter_reaches_its_node(client, flux_comfy):
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-2", "number": 0, "node_errors": {}})
    request = {
        "prompt": "x",
        "steps": 12,
        "cfg": 2.5,
        "lora_strength": 0.6,
        "seed": 42,
        "sampler": "euler_ancestral",
        "batch_size": 2,
        "height": 512,
    }
    assert client.post("/api/generate", json=request).status_code == 202
    graph = submitted_body(flux_comfy)["prompt"]
    assert graph["48"]["inputs"]["steps"] == 12
    assert graph["26"]["inputs"]["guidance"] == 2.5
    assert graph["101"]["inputs"]["strength_model"] == 0.6
    assert graph["25"]["inputs"]["noise_seed"] == 42
    assert graph["16"]["inputs"]["sampler_name"] == "euler_ancestral"
    assert graph["47"]["inputs"]["batch_size"] == 2
    assert graph["47"]["inputs"]["height"] == graph["48"]["inputs"]["height"] == 512


def test_fields_the_template_cannot_honour_are_reported(client, flux_comfy):
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-3", "number": 0, "node_errors": {}})
    body = client.post(
        "/api/generate", json={"prompt": "x", "negative_prompt": "blurry"}
    ).get_json()
    assert set(body["ignored_fields"]) == {"negative_prompt"}
    assert "BasicGuider" in body["ignored_fields"]["negative_prompt"]


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({}, "Missing required field: prompt"),
        ({"prompt": ""}, "Missing required field: prompt"),
        ({"prompt": "   "}, "Missing required field: prompt"),
        ({"prompt": 5}, "prompt must be of type string (got int)"),
        ({"prompt": "x", "width": 1000}, "width must be a multiple of 16 (got 1000)"),
        ({"prompt": "x", "height": 4096}, "height must be between 256 and 2048 (got 4096)"),
        ({"prompt": "x", "steps": 0}, "steps must be between 1 and 200 (got 0)"),
        ({"prompt": "x", "steps": "8"}, "steps must be of type integer (got str)"),
        ({"prompt": "x", "steps": True}, "steps must be of type integer (got bool)"),
        ({"prompt": "x", "cfg": 21}, "cfg must be between 0 and 20 (got 21)"),
        ({"prompt": "x", "seed": -1}, "seed must be between 0 and 18446744073709551615 (got -1)"),
        ({"prompt": "x", "colour": 1}, "Unknown field: colour"),
        ({"prompt": "x", "workflow": "nope"}, "Unknown workflow: nope"),
        ({"prompt": "x", "workflow": 3}, "workflow must be of type string"),
    ],
)
def test_bad_requests_get_a_clear_400(client, fake_comfy, request_body, message):
    response = client.post("/api/generate", json=request_body)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"].startswith(message)
    assert {"code", "request_id", "timestamp"} <= set(body)
    assert not [c for c in fake_comfy.calls if c.request.url.endswith("/prompt")]


def test_range_errors_name_the_allowed_range(client):
    body = client.post("/api/generate", json={"prompt": "x", "steps": 500}).get_json()
    assert body["details"] == {
        "field": "steps",
        "allowed": {"type": "integer", "minimum": 1, "maximum": 200},
        "received": 500,
    }


def test_body_that_is_not_json_is_refused(client):
    # A type a web form can send is refused before it is read (cross-site writes).
    response = client.post("/api/generate", data="prompt=x", content_type="text/plain")
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]
    response = client.post("/api/generate", data="{prompt", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["error"]
    response = client.post("/api/generate", json=["prompt"])
    assert response.status_code == 400


def test_missing_model_files_name_the_node_and_file_and_leave_no_job(client, flux_comfy, app):
    flux_comfy.post(f"{COMFY}/prompt", status=400, json=MISSING_MODELS)

    response = client.post("/api/generate", json={"prompt": "x"})

    assert response.status_code == 422
    body = response.get_json()
    assert body["error"].startswith(
        "ComfyUI rejected the workflow: missing model file 'flux2_dev_fp8mixed.safetensors' for"
        " UNETLoader (node 12, input unet_name): put it in models/diffusion_models/"
    )
    assert "models/loras/" in body["error"]
    assert body["node_errors"] == MISSING_MODELS["node_errors"]
    missing = {p["missing_model"]["file"]: p["missing_model"]["folder"] for p in body["details"]}
    assert missing == {
        "flux2_dev_fp8mixed.safetensors": "diffusion_models",
        "Flux_2-Turbo-LoRA_comfyui.safetensors": "loras",
    }
    assert app.extensions["sidecar"].store.count() == 0


def test_node_types_missing_on_an_old_server_are_all_named(client, fake_comfy, app):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info("SaveImage", "VAEDecode", "CLIPLoader"))
    response = client.post("/api/generate", json={"prompt": "x"})
    assert response.status_code == 422
    body = response.get_json()
    assert "does not have the node types" in body["error"]
    for name in ("Flux2Scheduler", "EmptyFlux2LatentImage", "FluxGuidance", "BasicGuider"):
        assert name in body["error"]
    assert not [c for c in fake_comfy.calls if c.request.url.endswith("/prompt")]
    assert app.extensions["sidecar"].store.count() == 0


def test_unreachable_comfyui_is_503_and_leaves_no_job(client, flux_comfy, app):
    flux_comfy.post(f"{COMFY}/prompt", body=requests.ConnectionError("refused"))
    response = client.post("/api/generate", json={"prompt": "x"})
    assert response.status_code == 503
    assert response.get_json()["error"] == "ComfyUI not responding"
    assert app.extensions["sidecar"].store.count() == 0


def test_comfyui_timeout_keeps_the_job_for_the_tracker(client, flux_comfy, app):
    flux_comfy.post(f"{COMFY}/prompt", body=requests.ReadTimeout("slow"))
    response = client.post("/api/generate", json={"prompt": "x"})
    assert response.status_code == 504
    body = response.get_json()
    job = app.extensions["sidecar"].store.get(body["job_id"])
    assert job.status == "queued" and job.submitted_at is None


def test_unknown_job_is_404(client):
    response = client.get("/api/status/does-not-exist")
    assert response.status_code == 404
    assert response.get_json()["error"] == "Job not found"


def test_workflow_chosen_per_request_and_by_default(tmp_path, workflows_dir, fake_comfy):
    from api import create_app
    from tests.unit.conftest import SYSTEM_STATS, make_config

    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    fake_comfy.get(
        f"{COMFY}/object_info", json=object_info("EmptyImage", "SidecarSleepProgress", "SaveImage")
    )
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-9", "number": 0, "node_errors": {}})
    app = create_app(make_config(tmp_path, workflows_dir, default_workflow="sidecar_test_sleep"))
    body = app.test_client().post("/api/generate", json={"prompt": "x", "steps": 3}).get_json()
    assert body["workflow"] == "sidecar_test_sleep"
    graph = submitted_body(fake_comfy)["prompt"]
    assert graph["2"]["inputs"]["steps"] == 3


def test_idempotency_key_returns_the_same_job(client, flux_comfy):
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-i", "number": 0, "node_errors": {}})
    headers = {"Idempotency-Key": "batch-7-item-3"}
    first = client.post("/api/generate", json={"prompt": "x"}, headers=headers)
    again = client.post("/api/generate", json={"prompt": "x"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.get_json()["replayed"] is True
    assert len([c for c in flux_comfy.calls if c.request.url.endswith("/prompt")]) == 1
    other = client.post("/api/generate", json={"prompt": "y"}, headers=headers)
    assert other.status_code == 422
    assert other.get_json()["code"] == "idempotency_key_reused"


def test_too_many_unfinished_jobs_is_429_with_retry_after(tmp_path, workflows_dir, fake_comfy):
    from api import create_app
    from tests.unit.conftest import SYSTEM_STATS, make_config

    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    fake_comfy.get(f"{COMFY}/object_info", json=object_info(*FLUX_CLASSES))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-b", "number": 0, "node_errors": {}})
    app = create_app(make_config(tmp_path, workflows_dir, max_unfinished_jobs=1))
    client = app.test_client()
    assert client.post("/api/generate", json={"prompt": "x"}).status_code == 202
    response = client.post("/api/generate", json={"prompt": "x"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert "Too many unfinished jobs" in response.get_json()["error"]


def test_timeout_minutes_sets_the_deadline(client, flux_comfy):
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-t", "number": 0, "node_errors": {}})
    body = client.post("/api/generate", json={"prompt": "x", "timeout_minutes": 2}).get_json()
    status = client.get(f"/api/status/{body['job_id']}").get_json()
    assert status["deadline"] is not None and status["options"]["timeout_minutes"] == 2
    bad = client.post("/api/generate", json={"prompt": "x", "timeout_minutes": 0})
    assert bad.status_code == 400 and bad.get_json()["details"]["field"] == "timeout_minutes"


def test_a_wait_without_a_free_watcher_slot_answers_202_with_the_job_kept(
    tmp_path, workflows_dir, fake_comfy
):
    """A 429 after the job was created would leave the client unsure whether it exists."""
    from api import create_app
    from tests.unit.conftest import SYSTEM_STATS, make_config

    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    fake_comfy.get(f"{COMFY}/object_info", json=object_info(*FLUX_CLASSES))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-w", "number": 0, "node_errors": {}})
    app = create_app(make_config(tmp_path, workflows_dir, max_watchers=1))
    watchers = app.extensions["sidecar"].watchers
    watchers.acquire()  # a long poll elsewhere holds the worker's only slot
    response = app.test_client().post("/api/generate?wait=30", json={"prompt": "x"})
    assert response.status_code == 202, response.get_json()
    job = app.extensions["sidecar"].store.get(response.get_json()["job_id"])
    assert job is not None and job.prompt_id == "p-w"
    watchers.release()
    # The slot a wait takes is given back whatever the submission's fate.
    fake_comfy.replace("POST", f"{COMFY}/prompt", body=requests.ConnectionError("down"))
    assert app.test_client().post("/api/generate?wait=30", json={"prompt": "x"}).status_code == 503
    watchers.acquire()
    watchers.release()


def test_cancelling_a_running_job_succeeds_when_the_tracker_settles_the_interruption_first(
    client, app, fake_comfy
):
    """ComfyUI reports the interruption on its socket at once: the tracker may record the job
    cancelled before the DELETE does, and the DELETE is still the cancellation that did it."""
    from api.job import JobStatus
    from tests.support.jobs import add_job

    store = app.extensions["sidecar"].store
    add_job(store, "j-run", "p-run", submitted=True)
    store.mark_processing("p-run")
    fake_comfy.get(
        f"{COMFY}/queue", json={"queue_running": [[0, "p-run", {}, {}, []]], "queue_pending": []}
    )

    def interrupted(request):
        # What the tracker does on ComfyUI's execution_interrupted, before the answer arrives.
        store.finish("j-run", JobStatus.CANCELLED, error="Cancelled: interrupted in ComfyUI")
        return 200, {}, json.dumps({"cancelled": True})

    fake_comfy.add_callback("POST", f"{COMFY}/api/jobs/p-run/cancel", callback=interrupted)
    response = client.delete("/api/queue/j-run")
    assert response.status_code == 200, response.get_json()
    assert store.get("j-run").status == JobStatus.CANCELLED
    # A job that had ended before the DELETE is still a 409.
    assert client.delete("/api/queue/j-run").status_code == 409


def test_output_subfolder_saves_images_in_a_dated_folder(tmp_path, workflows_dir, flux_comfy):
    # ComfyUI lists the folder it saves into on every save: OUTPUT_SUBFOLDER keeps it small.
    config = make_config(tmp_path, workflows_dir, output_subfolder="flux/%Y-%m-%d")
    flux_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    client = create_app(config).test_client()
    flux_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-1", "number": 3, "node_errors": {}})

    days = {time.strftime("%Y-%m-%d", time.gmtime())}
    response = client.post("/api/generate", json={"prompt": "a red fox"})
    days.add(time.strftime("%Y-%m-%d", time.gmtime()))  # a request across midnight

    assert response.status_code == 202
    prefix = submitted_body(flux_comfy)["prompt"]["9"]["inputs"]["filename_prefix"]
    assert prefix in {f"flux/{day}/Flux2_Turbo" for day in days}


IMAGE = {"filename": "Waited_00001_.png", "subfolder": "", "type": "output", "node_id": "9"}


@pytest.mark.parametrize(
    "accept, image",
    [
        ("image/png", True),
        ("image/*", True),
        ("image/webp, application/json;q=0.5", True),
        ("*/*", False),  # curl's: scripts that never asked for an image get the JSON
        (None, False),
        ("application/json, image/png", False),  # as good as each other: JSON
        ("text/html", False),  # nothing the answer can be: the JSON, as always
    ],
)
def test_a_wait_answers_with_the_image_itself_when_accept_prefers_one(
    app, fake_comfy, accept, image
):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    output_dir = app.extensions["sidecar"].config.comfyui_output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / IMAGE["filename"]).write_bytes(png)
    headers = {"Accept": accept} if accept else {}
    client = app.test_client()
    response = waited_job_ends(
        app, client, fake_comfy, JobStatus.COMPLETED, headers=headers, outputs=[IMAGE]
    )
    assert response.status_code == 200, response.data[:200]
    if not image:
        assert response.mimetype == "application/json"
        assert response.get_json()["output_image"] == IMAGE["filename"]
        return
    assert response.mimetype == "image/png" and response.data == png
    job_id = response.headers["X-Job-ID"]
    assert app.extensions["sidecar"].store.get(job_id).status == "completed"
    assert response.headers["Content-Location"] == f"/api/image/{IMAGE['filename']}"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_wait_for_an_image_of_a_job_that_made_none_is_a_406_naming_the_job(app, fake_comfy):
    client = app.test_client()
    response = waited_job_ends(
        app, client, fake_comfy, JobStatus.COMPLETED, headers={"Accept": "image/png"}, outputs=[]
    )
    body = response.get_json()
    assert response.status_code == 406, body
    assert body["code"] == "no_image" and body["status"] == "completed"
    assert body["job"]["job_id"] == body["job_id"]
    assert body["status_url"] == f"/api/status/{body['job_id']}"
    assert app.extensions["sidecar"].store.get(body["job_id"]).status == "completed"
    # Without a wait the Accept header changes nothing: the 202 of a queued job.
    fake_comfy.replace(
        "POST", f"{COMFY}/prompt", json={"prompt_id": "p-n", "number": 1, "node_errors": {}}
    )
    queued = client.post(
        "/api/generate",
        json={"prompt": "x", "workflow": "pipeline_check"},
        headers={"Accept": "image/png"},
    )
    assert queued.status_code == 202 and queued.get_json()["status"] == "queued"
