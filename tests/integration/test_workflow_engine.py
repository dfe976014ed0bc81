"""The workflow engine against a real ComfyUI (CPU, no models) and the sidecar under gunicorn:
FLUX.2 templates, workflows users drop in, LoRA checks, uploads, raw graphs and timeouts."""

import json
import shutil
import struct
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.images import png_bytes
from tests.support.object_info import EXPORTED
from tests.support.sidecar import SidecarProcess

FLUX2 = {
    "flux2_turbo_default": {},
    "flux2_turbo_edit": {"images": ["anything.png"]},
    "flux2_turbo_upscale": {},
    "flux2_dev": {},
}
FLUX2_CLASSES = {"EmptyFlux2LatentImage", "Flux2Scheduler", "FluxGuidance", "BasicGuider"}
SLEEP_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                 "color": 255}},
    "2": {"class_type": "SidecarSleepProgress", "inputs": {"image": ["1", 0], "steps": 2,
          "seconds_per_step": 0.05, "fail_at_step": -1, "seed": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "Dropped"}},
}  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def workflows_dir(sidecar) -> Path:
    return Path(sidecar.env["WORKFLOWS_DIR"])


@pytest.fixture(scope="module")
def server_classes(comfy) -> set[str]:
    return set(requests.get(comfy.url + "/object_info", timeout=60).json())


@pytest.mark.parametrize("name", FLUX2)
def test_each_flux2_template_names_what_this_comfyui_lacks(api, job_count, server_classes, name):
    before = job_count()
    response = api.post("/api/generate", json={"prompt": "a fox", "workflow": name, **FLUX2[name]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    if server_classes >= FLUX2_CLASSES:
        # New enough for FLUX.2, empty model folders: each file is named with its folder.
        assert "missing model file 'flux2_dev_fp8mixed.safetensors'" in error
        assert "put it in models/diffusion_models/" in error
        assert "models/text_encoders/" in error and "models/vae/" in error
        if name != "flux2_dev":
            assert "'Flux_2-Turbo-LoRA_comfyui.safetensors'" in error
    else:
        # The 2024 server: every node type it lacks is named, in one message.
        assert error.startswith("ComfyUI rejected the workflow: this ComfyUI does not have the")
        for class_type in FLUX2_CLASSES - server_classes:
            assert class_type in error
    assert job_count() == before

    check = api.get(f"/api/workflows/{name}?check=1").json()["comfyui_check"]
    assert check["runnable"] is False and check["problems"]


def test_startup_log_says_which_workflows_can_run(sidecar):
    log = sidecar.log_path.read_text(errors="replace")
    assert "workflow pipeline_check can run on this ComfyUI" in log
    assert "workflow flux2_turbo_default cannot run on this ComfyUI:" in log


def test_a_dropped_exported_workflow_is_picked_up_and_runs(api, sidecar):
    name = f"dropped_{uuid.uuid4().hex[:8]}"
    assert name not in api.get("/api/workflows").json()["workflows"]
    (workflows_dir(sidecar) / f"{name}.json").write_text(json.dumps(SLEEP_GRAPH))

    listed = api.get("/api/workflows").json()
    assert name in listed["workflows"]
    described = api.get(f"/api/workflows/{name}").json()
    assert described["detected"] is True
    assert described["parameters"]["seed"]["sets"] == ["2.seed"]
    assert described["parameters"]["prompt"]["required"] is False

    job = api.generate(workflow=name, prompt="dropped in")
    final = api.wait_final(job["job_id"])
    assert final["status"] == "completed", final
    assert final["output_image"].startswith("Dropped_")


def test_a_broken_dropped_file_is_listed_as_invalid_and_the_server_carries_on(api, sidecar):
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (workflows_dir(sidecar) / f"{name}.json").write_text('{"1": {"class_type": ')
    body = api.get("/api/workflows").json()
    assert "not valid JSON" in body["invalid"][name]
    assert api.get(f"/api/workflows/{name}").status_code == 422
    assert api.get("/health").status_code == 200


def test_an_exported_sd15_graph_gets_lora_and_model_errors_from_this_comfyui(
    api, sidecar, job_count
):
    name = f"sd15_{uuid.uuid4().hex[:8]}"
    shutil.copy(EXPORTED / "sd15_basic.json", workflows_dir(sidecar) / f"{name}.json")
    before = job_count()

    response = api.post(
        "/api/generate", json={"workflow": name, "prompt": "x", "loras": ["mine.safetensors:0.7"]}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "unknown_lora"
    assert body["error"] == (
        "Unknown LoRA 'mine.safetensors' (loras); this ComfyUI has none in models/loras/"
    )
    assert body["details"]["available"] == []

    response = api.post("/api/generate", json={"workflow": name, "prompt": "x", "steps": 4})
    assert response.status_code == 422, response.text
    assert "missing model file 'v1-5-pruned-emaonly.safetensors'" in response.json()["error"]
    assert "models/checkpoints/" in response.json()["error"]
    assert job_count() == before


def test_upload_then_load_it_then_load_the_result(api, comfy):
    image = png_bytes(32, 16, (0, 0, 255))
    name = f"up_{uuid.uuid4().hex[:8]}.png"
    uploaded = api.post("/api/upload", files={"image": (name, image, "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    stored = uploaded.json()
    assert stored["name"] == name and stored["type"] == "input"
    assert (comfy.input_dir / name).read_bytes() == image

    first = api.wait_final(
        api.generate(workflow="sidecar_test_load_image", images=[stored["reference"]])["job_id"]
    )
    assert first["status"] == "completed", first
    assert png_size(api.get(first["image_url"]).content) == (16, 8)

    # An earlier job's output, loaded where it lies (LoadImage "<name> [output]").
    second = api.generate(workflow="sidecar_test_load_image", images=[f"job:{first['job_id']}"])
    assert second["parameters"]["images"] == [f"{first['output_image']} [output]"]
    final = api.wait_final(second["job_id"])
    assert final["status"] == "completed", final
    assert png_size(api.get(final["image_url"]).content) == (8, 4)


def test_an_image_comfyui_does_not_have_is_named_by_comfyui(api, job_count):
    before = job_count()
    response = api.post(
        "/api/generate", json={"workflow": "sidecar_test_load_image", "images": ["nope.png"]}
    )
    assert response.status_code == 422, response.text
    assert "Invalid image file: nope.png" in response.json()["error"]
    assert job_count() == before


def test_an_upload_that_is_not_an_image_never_reaches_comfyui(api, comfy):
    response = api.post("/api/upload", files={"image": ("x.png", b"#!/bin/sh\n", "image/png")})
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert not (comfy.input_dir / "x.png").exists()


def test_a_raw_graph_runs_and_keeps_its_metadata(api):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                     "color": int(time.time()) % 0xFFFFFF}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "Raw"}},
    }  # fmt: skip
    response = api.post(
        "/api/workflows/execute",
        json={"workflow": graph, "priority": "high", "metadata": {"order": 42}},
    )
    assert response.status_code == 202, response.text
    final = api.wait_final(response.json()["job_id"])
    assert final["status"] == "completed", final
    assert final["metadata"] == {"order": 42} and final["priority"] == "high"
    assert final["output_image"].startswith("Raw_")


def test_a_raw_graph_can_answer_with_its_result(api, comfy):
    graph = json.loads(json.dumps(SLEEP_GRAPH))
    graph["2"]["inputs"]["seed"] = int(time.time() * 1000)
    response = api.post("/api/workflows/execute?wait=30", json={"workflow": graph})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "completed" and done["output_image"].startswith("Dropped_")
    assert (
        api.get(done["image_url"]).content == (comfy.output_dir / done["output_image"]).read_bytes()
    )


def test_a_raw_graph_past_its_timeout_is_stopped(api):
    graph = json.loads(json.dumps(SLEEP_GRAPH))
    graph["2"]["inputs"].update(steps=60, seconds_per_step=0.25, seed=int(time.time()))
    response = api.post("/api/workflows/execute", json={"workflow": graph, "timeout_minutes": 0.03})
    assert response.status_code == 202, response.text
    started = time.monotonic()
    final = api.wait_final(response.json()["job_id"], timeout=30)
    assert final["status"] == "failed"
    assert final["error"] == "Job timed out after 0.03 minutes"
    assert time.monotonic() - started < 10  # not the 15 s the graph would take
    # ComfyUI was interrupted: the next job runs at once.
    after = api.generate(workflow="pipeline_check", prompt="after", width=16, height=16)
    assert api.wait_final(after["job_id"], timeout=15)["status"] == "completed"


def test_raw_graphs_switched_off(comfy, tmp_path):
    sidecar = SidecarProcess(
        {
            "COMFYUI_HOST": "127.0.0.1",
            "COMFYUI_PORT": str(comfy.port),
            "WORKSPACE_PATH": str(tmp_path / "workspace"),
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir),
            "TRACKER_ENABLED": "false",
            "GUNICORN_WORKERS": "1",
        },
        tmp_path / "gunicorn.log",
    ).start()
    try:
        session = requests.Session()
        session.trust_env = False
        response = session.post(
            sidecar.url + "/api/workflows/execute", json={"workflow": SLEEP_GRAPH}, timeout=30
        )
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "raw_graphs_disabled" and "RAW_GRAPHS_ENABLED" in body["error"]
        assert body["request_id"]
    finally:
        sidecar.stop()
