"""Prompt in, image out, against a real ComfyUI (CPU) and the sidecar under real gunicorn."""

import json
import os
import time
from pathlib import Path

import pytest
import requests

from tests.support.sidecar import wait_for

pytestmark = pytest.mark.both_stores

FLUX2_CLASSES = {"EmptyFlux2LatentImage", "Flux2Scheduler", "FluxGuidance", "BasicGuider"}


def saved_in(final: dict) -> str:
    """Where a job's files are saved in the output folder: as the template says on one
    sidecar, in its node's folder in a cluster (docs/scaling.md, file names)."""
    return f"{final['node']}/" if final.get("node") else ""


def test_job_runs_with_rising_progress_and_the_image_matches_comfyuis_file(api, comfy):
    job = api.generate(
        prompt="progress please", workflow="sidecar_test_sleep", steps=8, seconds_per_step=0.25
    )
    seen = []

    def finished():
        status = api.status(job["job_id"])
        seen.append((status["status"], status["progress"], status["current_step"]))
        return status["status"] in ("completed", "failed", "cancelled") and status

    final = wait_for(finished, 60, 0.05, "the job to finish")

    assert final["status"] == "completed", final
    running = [s for s in seen if s[0] == "processing"]
    assert any(0 < progress < 1 for _, progress, _ in running), seen
    progresses = [progress for _, progress, _ in seen]
    assert progresses == sorted(progresses), "progress went backwards"
    assert final["progress"] == 1.0 and final["total_steps"] == 8
    assert final["output_image"].startswith(saved_in(final) + "SidecarTest_"), final
    assert final["error"] is None

    response = api.get(f"/api/image/{final['output_image']}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == (comfy.output_dir / final["output_image"]).read_bytes()


def test_every_image_of_a_batch_is_recorded_and_served(api, comfy):
    job = api.generate(
        prompt="two", workflow="sidecar_test_sleep", batch_size=2, steps=1, seconds_per_step=0
    )
    final = api.wait_final(job["job_id"])
    assert final["status"] == "completed"
    assert len(final["images"]) == 2
    for image in final["images"]:
        body = api.get(image["url"]).content
        assert body == (comfy.output_dir / image["subfolder"] / image["filename"]).read_bytes()


def test_forced_node_failure_ends_failed_with_comfyuis_message(api):
    job = api.generate(
        prompt="fail",
        workflow="sidecar_test_sleep",
        steps=5,
        seconds_per_step=0.05,
        fail_at_step=2,
    )
    final = api.wait_final(job["job_id"])
    assert final["status"] == "failed"
    assert "SidecarSleepProgress" in final["error"]
    assert "forced failure at step 2" in final["error"]
    assert final["output_image"] is None


def test_shipped_pipeline_check_runs_on_any_comfyui(api):
    job = api.generate(
        prompt="check", workflow="pipeline_check", color=0x00FF00, width=64, height=64
    )
    final = api.wait_final(job["job_id"])
    assert final["status"] == "completed", final
    assert final["output_image"].startswith(saved_in(final) + "PipelineCheck_")


def waits_for_a_node_that_can_run_it(api, response) -> str:
    """In a cluster a job no live node can run is accepted and waits, its status saying why
    (docs/scaling.md); cancelled here so the next tests find an empty queue."""
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    status = api.status(job_id)
    assert status["status"] == "queued" and "node" not in status
    cancelled = api.session.delete(f"{api.base}/api/queue/{job_id}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["was"] == "queued"
    return status["waiting_reason"]


def test_flux2_default_template_gets_a_clear_error_and_leaves_no_job(api, comfy, job_count):
    before = job_count()
    response = api.post("/api/generate", json={"prompt": "a fox"})
    server_classes = set(requests.get(comfy.url + "/object_info", timeout=60).json())
    if api.mode == "postgresql":
        reason = waits_for_a_node_that_can_run_it(api, response)
        assert "no live node can run workflow 'flux2_turbo_default'" in reason
        for name in FLUX2_CLASSES - server_classes:
            assert name in reason
        return
    assert response.status_code == 422, response.text
    body = response.json()
    if server_classes >= FLUX2_CLASSES:
        # A server new enough for FLUX.2, with empty model folders: the files are named.
        assert "missing model file 'flux2_dev_fp8mixed.safetensors'" in body["error"]
        assert "models/diffusion_models/" in body["error"]
        assert "Flux_2-Turbo-LoRA_comfyui.safetensors" in body["error"]
    else:
        # The 2024 server: it lacks FLUX.2's node types, and the error says which.
        assert "does not have the node types" in body["error"]
        for name in FLUX2_CLASSES - server_classes:
            assert name in body["error"]
    assert job_count() == before


def test_missing_checkpoint_is_named_with_its_folder(api, job_count):
    before = job_count()
    response = api.post(
        "/api/generate", json={"prompt": "x", "workflow": "sidecar_test_missing_model"}
    )
    if api.mode == "postgresql":
        reason = waits_for_a_node_that_can_run_it(api, response)
        assert "missing model file 'sd15_missing.safetensors'" in reason
        assert "models/checkpoints/" in reason
        return
    assert response.status_code == 422, response.text
    body = response.json()
    assert "missing model file 'sd15_missing.safetensors'" in body["error"]
    assert "models/checkpoints/" in body["error"]
    assert body["node_errors"]["1"]["class_type"] == "CheckpointLoaderSimple"
    assert job_count() == before


def test_bad_input_never_reaches_comfyui(api, job_count):
    before = job_count()
    for body, message in [
        ({}, "Missing required field: prompt"),
        ({"prompt": "x", "width": 1000}, "width must be a multiple of 16"),
        ({"prompt": "x", "nope": 1}, "Unknown field: nope"),
    ]:
        response = api.post("/api/generate", json=body)
        assert response.status_code == 400
        assert response.json()["error"].startswith(message)
    missing = api.get("/api/status/unknown")
    assert missing.status_code == 404
    assert missing.json()["error"] == "Job not found"
    assert job_count() == before


def test_image_route_stays_inside_the_output_directory(api, comfy, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    link = comfy.output_dir / "escape_link.png"
    os.symlink(secret, link)
    try:
        for path in (
            "/api/image/..%2F..%2Fetc%2Fpasswd",
            "/api/image/escape_link.png",
            "/api/image/x.png?subfolder=..%2F..",
            "/api/image/%2Fetc%2Fpasswd",
        ):
            response = api.get(path)
            assert response.status_code in (400, 404), path
            assert b"secret" not in response.content and b"root:" not in response.content
    finally:
        link.unlink()


def test_exactly_one_tracker_runs_across_workers(sidecar):
    workers = sidecar.worker_pids()
    assert len(workers) == 2
    lock = Path(sidecar.env["WORKSPACE_PATH"]) / "sidecar" / "tracker.lock"
    holder = int(lock.read_text().split()[0])
    assert holder in workers
    assert sidecar.tracker_state()["pid"] == holder


def test_seed_is_recorded_and_reused_exactly(api):
    job = api.generate(
        prompt="seeded", workflow="sidecar_test_sleep", steps=1, seconds_per_step=0, seed=2**64 - 1
    )
    assert job["seed"] == 2**64 - 1
    (row,) = api.process.query("SELECT graph FROM jobs WHERE id = %s", (job["job_id"],))
    graph = json.loads(row[0])
    assert graph["2"]["inputs"]["seed"] == 2**64 - 1
    assert api.wait_final(job["job_id"])["status"] == "completed"


def test_output_subfolder_saves_in_a_dated_folder_that_is_served_and_listed(own_sidecar, comfy):
    # ComfyUI lists the folder it saves into on every save: a folder a day keeps that small.
    _, _, api = own_sidecar(OUTPUT_SUBFOLDER="sidecar-test/%Y-%m-%d")
    days = {time.strftime("%Y-%m-%d", time.gmtime())}
    job = api.generate(prompt="dated", workflow="sidecar_test_sleep", steps=1, seconds_per_step=0)
    final = api.wait_final(job["job_id"])
    days.add(time.strftime("%Y-%m-%d", time.gmtime()))

    assert final["status"] == "completed", final
    folder, _, name = final["output_image"].rpartition("/")
    assert folder in {f"sidecar-test/{day}" for day in days} and name.startswith("SidecarTest_")
    assert final["images"][0]["subfolder"] == folder
    saved = comfy.output_dir / folder / name
    assert api.get(f"/api/image/{final['output_image']}").content == saved.read_bytes()
    listed = wait_for(
        lambda: (
            final["output_image"] in (images := api.get("/api/outputs").json()["images"]) and images
        ),
        10,
        0.1,
        "the listing to show the image",
    )
    assert listed[0] == final["output_image"]  # the newest
