"""Schedulers, samplers, reference images, the upscale model, uploads and workflow listing,
through the API against a fake ComfyUI that answers with ComfyUI 0.33.0's node schemas."""

import io
import json
import logging

import pytest
import requests

from api import create_app
from api.job import JobStatus
from tests.support.images import png_bytes
from tests.support.jobs import add_job
from tests.support.object_info import exported, object_info_0330
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config, never_asked

SCHEDULERS = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]


@pytest.fixture
def comfy(fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(upscale_models=["4x_Other.pth"]))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-1", "number": 1, "node_errors": {}})
    return fake_comfy


def sent_graph(mock) -> dict:
    calls = [c for c in mock.calls if c.request.url.endswith("/prompt")]
    return json.loads(calls[-1].request.body)["prompt"]


# --- scheduler and sampler -------------------------------------------------------------------


def test_a_scheduler_name_swaps_in_basicscheduler(client, comfy):
    response = client.post("/api/generate", json={"prompt": "x", "scheduler": "beta", "steps": 6})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["ignored_fields"] == {}
    graph = sent_graph(comfy)
    assert graph["48"]["class_type"] == "BasicScheduler"
    assert graph["48"]["inputs"] == {
        "model": ["101", 0],
        "scheduler": "beta",
        "steps": 6,
        "denoise": 1.0,
    }
    assert graph["13"]["inputs"]["sigmas"] == ["48", 0]


def test_without_a_scheduler_the_template_keeps_flux2scheduler(client, comfy):
    assert client.post("/api/generate", json={"prompt": "x"}).status_code == 202
    graph = sent_graph(comfy)
    assert graph["48"] == {
        "class_type": "Flux2Scheduler",
        "inputs": {"steps": 8, "width": 1024, "height": 1024},
        "_meta": {"title": "Flux2Scheduler"},
    }


def test_an_unknown_scheduler_or_sampler_lists_what_comfyui_has(client, comfy):
    body = client.post("/api/generate", json={"prompt": "x", "scheduler": "karras2"}).get_json()
    assert body["code"] == "unknown_scheduler"
    assert body["error"] == (
        f"Unknown scheduler 'karras2' (scheduler); available: {', '.join(SCHEDULERS)}"
    )
    body = client.post("/api/generate", json={"prompt": "x", "sampler": "euler_a"}).get_json()
    assert body["code"] == "unknown_sampler"
    assert body["error"].startswith("Unknown sampler 'euler_a' (sampler); available: euler, ")
    assert "... and 29 more (all in details.available)" in body["error"]
    assert len(body["details"]["available"]) == 44
    never_asked(comfy, "POST /prompt")


# --- reference images (flux2_turbo_edit) ----------------------------------------------------


def test_edit_takes_uploads_and_earlier_results_each_with_its_reference_latent(client, comfy, app):
    store = app.extensions["sidecar"].store
    add_job(store, "old", "p-old", workflow="flux2_turbo_default")
    store.finish(
        "old",
        JobStatus.COMPLETED,
        outputs=[
            {"filename": "Flux2_Turbo_00001_.png", "subfolder": "", "type": "output"},
            {"filename": "Flux2_Turbo_00002_.png", "subfolder": "run", "type": "output"},
        ],
    )
    images = [
        "photo.png",
        "job:old",
        {"job_id": "old", "index": 1},
        {"name": "b.png", "subfolder": "mine", "type": "input"},
    ]
    response = client.post(
        "/api/generate", json={"workflow": "flux2_turbo_edit", "prompt": "x", "images": images}
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["parameters"]["images"] == [
        "photo.png",
        "Flux2_Turbo_00001_.png [output]",
        "run/Flux2_Turbo_00002_.png [output]",
        "mine/b.png",
    ]
    graph = sent_graph(comfy)
    loads = [n for n, node in graph.items() if node["class_type"] == "LoadImage"]
    assert [graph[n]["inputs"]["image"] for n in loads] == response.get_json()["parameters"][
        "images"
    ]
    # Each ReferenceLatent takes the previous one's conditioning; the guider the last one.
    chain, node = [], graph["22"]["inputs"]["conditioning"][0]
    while graph[node]["class_type"] == "ReferenceLatent":
        chain.append(node)
        node = graph[node]["inputs"]["conditioning"][0]
    assert len(chain) == 4 and node == "26"
    assert chain[-1] == "43"
    # The output size still comes from the first image.
    assert graph["47"]["inputs"]["width"] == ["72", 0]
    assert graph["72"]["inputs"]["image"] == ["45", 0]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (None, "Missing required field: images"),
        ([], "images takes 1 to 4 items (got 0)"),
        (["a.png"] * 5, "images takes 1 to 4 items (got 5)"),
        (["../secret.png"], "images[0]: image: '../secret.png' must not contain '..'"),
        (["/etc/x.png"], "images[0]: image: '/etc/x.png' is not a relative file name"),
        (["job:nope"], "images[0]: no job nope"),
        (["job:queued"], "images[0]: job queued is queued, not completed"),
        ([{"job_id": "done", "index": 3}], "images[0]: job done has 0 image(s); there is no index"),
        ([7], "images[0]: an uploaded image name, 'job:<job_id>'"),
    ],
)
def test_bad_image_references_are_a_400(client, comfy, app, images, message):
    store = app.extensions["sidecar"].store
    add_job(store, "queued", "p-q", workflow="w")
    add_job(store, "done", "p-d", workflow="w")
    store.finish("done", JobStatus.COMPLETED, outputs=[])
    request = {"workflow": "flux2_turbo_edit", "prompt": "x"}
    if images is not None:
        request["images"] = images
    body = client.post("/api/generate", json=request).get_json()
    assert body["error"].startswith(message), body
    never_asked(comfy, "GET /object_info", "POST /prompt")


# --- upscale model ---------------------------------------------------------------------------


def test_upscale_model_comes_from_the_setting_and_a_request_name_is_checked(
    tmp_path, workflows_dir, comfy
):
    comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(tmp_path, workflows_dir, upscale_model="4x_Other.pth")
    client = create_app(config).test_client()
    body = client.post("/api/generate", json={"prompt": "x", "workflow": "flux2_turbo_upscale"})
    assert body.status_code == 202, body.get_json()
    graph = sent_graph(comfy)
    assert graph["110"]["inputs"]["model_name"] == "4x_Other.pth"
    assert graph["111"]["inputs"] == {"upscale_model": ["110", 0], "image": ["8", 0]}
    assert graph["9"]["inputs"]["images"] == ["112", 0]
    bad = client.post(
        "/api/generate",
        json={"prompt": "x", "workflow": "flux2_turbo_upscale", "upscale_model": "nope.pth"},
    ).get_json()
    assert bad["code"] == "unknown_model"
    assert bad["error"] == (
        "Unknown model file 'nope.pth' (upscale_model); available in models/upscale_models/: "
        "4x_Other.pth"
    )


# --- uploads ---------------------------------------------------------------------------------


def test_upload_is_checked_and_forwarded_to_comfyui(client, fake_comfy):
    fake_comfy.post(
        f"{COMFY}/upload/image", json={"name": "cat.png", "subfolder": "", "type": "input"}
    )
    response = client.post(
        "/api/upload",
        data={"image": (io.BytesIO(png_bytes()), "cat.png"), "overwrite": "true"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "name": "cat.png",
        "subfolder": "",
        "type": "input",
        "reference": "cat.png",
        "size": len(png_bytes()),
    }
    (call,) = [c for c in fake_comfy.calls if c.request.url.endswith("/upload/image")]
    sent = call.request.body
    assert b'filename="cat.png"' in sent and b"Content-Type: image/png" in sent
    assert png_bytes() in sent
    assert b'name="overwrite"\r\n\r\ntrue' in sent and b'name="type"\r\n\r\ninput' in sent


def test_an_upload_named_wrongly_gets_the_extension_of_its_content(client, fake_comfy):
    fake_comfy.post(
        f"{COMFY}/upload/image", json={"name": "x.png", "subfolder": "", "type": "input"}
    )
    client.post(
        "/api/upload",
        data={"image": (io.BytesIO(png_bytes()), "../../x.jpg")},
        content_type="multipart/form-data",
    )
    (call,) = [c for c in fake_comfy.calls if c.request.url.endswith("/upload/image")]
    assert b'filename="x.png"' in call.request.body


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"image": (io.BytesIO(b"GIF89a...."), "a.gif")}, 415, "unsupported_media_type"),
        ({"image": (io.BytesIO(b"<svg></svg>"), "a.png")}, 415, "unsupported_media_type"),
        ({"image": (io.BytesIO(b""), "a.png")}, 400, "invalid_request"),
        ({"file": (io.BytesIO(b"x"), "a.png")}, 400, "invalid_request"),
    ],
)
def test_uploads_that_are_not_images_are_refused(client, fake_comfy, data, status, code):
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert not [c for c in fake_comfy.calls if "upload" in c.request.url]


def test_upload_size_limit_and_comfyui_down(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    client = create_app(make_config(tmp_path, workflows_dir, max_upload_mb=0.0001)).test_client()
    big = client.post(
        "/api/upload",
        data={"image": (io.BytesIO(png_bytes(64, 64)), "a.png")},
        content_type="multipart/form-data",
    )
    assert big.status_code == 413
    assert "uploads are limited to" in big.get_json()["error"]
    fake_comfy.post(f"{COMFY}/upload/image", body=requests.ConnectionError("refused"))
    down = client.post(
        "/api/upload",
        data={"image": (io.BytesIO(png_bytes(1, 1)), "a.png")},
        content_type="multipart/form-data",
    )
    assert down.status_code == 503


# --- listing and describing workflows -------------------------------------------------------


def test_workflows_are_listed_with_the_invalid_ones_and_their_reasons(client, workflows_dir):
    (workflows_dir / "sd15.json").write_text(json.dumps(exported("sd15_basic")))
    (workflows_dir / "broken.json").write_text("{")
    body = client.get("/api/workflows").get_json()
    assert {"flux2_turbo_default", "flux2_turbo_edit", "flux2_turbo_upscale", "flux2_dev"} <= set(
        body["workflows"]
    )
    assert "sd15" in body["workflows"] and body["total"] == len(body["workflows"])
    assert "not valid JSON" in body["invalid"]["broken"]


def test_a_workflow_shows_what_was_detected(client, workflows_dir):
    (workflows_dir / "sd15.json").write_text(json.dumps(exported("sd15_basic")))
    body = client.get("/api/workflows/sd15").get_json()
    assert body["detected"] is True
    assert body["parameters"]["prompt"]["sets"] == ["6.text"]
    assert body["parameters"]["prompt"]["source"] == "detected"
    assert "CLIPTextEncode 6.text" in body["parameters"]["prompt"]["description"]
    assert body["parameters"]["seed"]["random_when_missing"] is True
    assert body["loras"]["chained_after"] == "4:0"
    assert body["models"][0]["folder"] == "checkpoints"


def test_a_shipped_template_describes_its_models_and_options(client):
    body = client.get("/api/workflows/flux2_turbo_edit").get_json()
    assert body["detected"] is False
    assert body["parameters"]["images"]["kind"] == "images"
    assert body["parameters"]["images"]["maxItems"] == 4
    assert body["parameters"]["scheduler"]["swaps_node"] == "48"
    assert {m["folder"] for m in body["models"]} == {
        "diffusion_models",
        "text_encoders",
        "vae",
        "loras",
    }


def test_unknown_and_invalid_workflows(client, workflows_dir):
    (workflows_dir / "broken.json").write_text("{")
    missing = client.get("/api/workflows/nope")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "Unknown workflow: nope"
    broken = client.get("/api/workflows/broken")
    assert broken.status_code == 422
    assert broken.get_json()["code"] == "workflow_invalid"
    assert "not valid JSON" in broken.get_json()["details"]["reason"]


def test_check_against_the_running_comfyui(client, fake_comfy):
    fake_comfy.get(
        f"{COMFY}/object_info",
        json=object_info_0330(
            diffusion_models=["flux2_dev_fp8mixed.safetensors"],
            text_encoders=["mistral_3_small_flux2_bf16.safetensors"],
            vae=["full_encoder_small_decoder.safetensors"],
        ),
    )
    body = client.get("/api/workflows/flux2_turbo_edit?check=1").get_json()
    assert body["comfyui_check"]["runnable"] is False
    (problem,) = body["comfyui_check"]["problems"]
    assert problem["missing_model"] == {
        "file": "Flux_2-Turbo-LoRA_comfyui.safetensors",
        "folder": "loras",
    }
    dev = client.get("/api/workflows/flux2_dev?check=true").get_json()
    assert dev["comfyui_check"] == {"runnable": True, "problems": []}


def test_startup_says_which_workflows_this_comfyui_can_run(
    tmp_path, workflows_dir, fake_comfy, caplog
):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    info = {k: v for k, v in object_info_0330().items() if "Flux" not in k}
    fake_comfy.get(f"{COMFY}/object_info", json=info)
    with caplog.at_level(logging.INFO, logger="api"):
        create_app(make_config(tmp_path, workflows_dir))
    lines = [r.getMessage() for r in caplog.records]
    assert "workflow pipeline_check can run on this ComfyUI" in lines
    (default,) = [x for x in lines if x.startswith("workflow flux2_turbo_default cannot run")]
    assert "does not have the node types" in default
    assert "FluxGuidance (node 26)" in default and "Flux2Scheduler (node 48)" in default
