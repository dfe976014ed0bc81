"""Queue control, listings and system info over HTTP, against the real ComfyUI."""

import time

import pytest

from tests.support.sidecar import wait_for

pytestmark = pytest.mark.both_stores

LONG = {"workflow": "sidecar_test_sleep", "steps": 100, "seconds_per_step": 0.1}
SHORT = {"workflow": "sidecar_test_sleep", "steps": 2, "seconds_per_step": 0.05}


def start_running(api, **extra):
    job = api.generate(prompt="long", **{**LONG, **extra})
    wait_for(
        lambda: api.status(job["job_id"])["status"] == "processing",
        30,
        0.05,
        "the long job to start",
    )
    return job


def positions(api) -> dict:
    return {jid: j["queue_position"] for jid, j in api.get("/api/queue").json()["jobs"].items()}


def test_cancel_a_pending_job_leaves_the_others_alone(api):
    running = start_running(api, steps=30)
    first = api.generate(prompt="pending 1", **SHORT)
    second = api.generate(prompt="pending 2", **SHORT)
    body = api.get("/api/queue").json()
    assert body["queue"]["queue_running"][0][1] == running["prompt_id"]
    assert [item[1] for item in body["queue"]["queue_pending"]] == [
        first["prompt_id"],
        second["prompt_id"],
    ]
    assert positions(api) == {running["job_id"]: 0, first["job_id"]: 1, second["job_id"]: 2}
    assert body["total_jobs"] == 3

    response = api.session.delete(f"{api.base}/api/queue/{second['job_id']}", timeout=30)
    assert response.status_code == 200
    assert response.json() == {
        **response.json(),
        "status": "success",
        "message": f"Job {second['job_id']} cancelled",
    }

    assert api.status(second["job_id"])["status"] == "cancelled"
    pending = [item[1] for item in api.get("/api/queue").json()["queue"]["queue_pending"]]
    assert pending == [first["prompt_id"]]
    assert api.status(running["job_id"])["status"] == "processing"
    assert api.wait_final(running["job_id"])["status"] == "completed"
    assert api.wait_final(first["job_id"])["status"] == "completed"
    assert api.status(second["job_id"])["status"] == "cancelled"
    again = api.session.delete(f"{api.base}/api/queue/{second['job_id']}", timeout=30)
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]


def test_places_follow_comfyuis_order_as_runs_end_without_reading_its_queue_each_time(
    own_sidecar,
):
    # Passes every 5 s: places that move within that come from the passes that each run's
    # end asks for, which rank the jobs by ComfyUI's numbers while it holds only these.
    _, proxy, api = own_sidecar(RECONCILE_INTERVAL="5", RATE_LIMIT="")
    step = {"workflow": "sidecar_test_sleep", "seconds_per_step": 0.1}
    running = start_running(api, steps=15)
    first = api.generate(prompt="first", steps=15, **step)
    second = api.generate(prompt="second", steps=4, **step)
    # Sent to the front of ComfyUI's queue (a negative number): a raw graph with priority.
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                     "color": 7}},
        "2": {"class_type": "SidecarSleepProgress", "inputs": {"image": ["1", 0], "steps": 15,
              "seconds_per_step": 0.1, "fail_at_step": -1, "seed": time.time_ns()}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "Up"}},
    }  # fmt: skip
    answer = api.post("/api/workflows/execute", json={"workflow": graph, "priority": "high"})
    assert answer.status_code == 202, answer.text
    urgent = answer.json()
    order = [running, urgent, first, second]

    def places() -> list:
        return [api.status(job["job_id"])["queue_position"] for job in order]

    wait_for(lambda: places() == [0, 1, 2, 3], 10, 0.05, "the first places")
    proxy.watch_requests(b"GET /queue HTTP/")
    wait_for(lambda: places() == [None, 0, 1, 2], 10, 0.05, "the places after the first run")
    wait_for(lambda: places() == [None, None, 0, 1], 10, 0.05, "the places after the second")
    assert api.wait_final(second["job_id"])["status"] == "completed"
    assert [api.status(job["job_id"])["status"] for job in order] == ["completed"] * 4
    # Each run's end, and each start, asked for a pass (one a second at most), and each read
    # the rows only; /queue is read when a count does not add up, or the last look is 15
    # intervals old. Reading it at each (as before) was 4 reads here.
    assert proxy.requests_seen(b"GET /queue HTTP/") <= 1


def test_cancel_the_running_job_and_the_next_one_starts(api):
    running = start_running(api)
    following = api.generate(prompt="next", **SHORT)
    response = api.session.delete(f"{api.base}/api/queue/{running['job_id']}", timeout=30)
    assert response.status_code == 200
    final = api.wait_final(running["job_id"], timeout=10)
    assert final["status"] == "cancelled"
    assert api.wait_final(following["job_id"])["status"] == "completed"


def test_clear_cancels_pending_jobs_and_lets_the_running_one_finish(api):
    running = start_running(api, steps=20)
    pending = [api.generate(prompt=f"p{i}", **SHORT) for i in range(3)]
    response = api.post("/api/queue/clear")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["message"]) == ("success", "Queue cleared")
    assert sorted(body["cancelled"]) == sorted(j["job_id"] for j in pending)
    assert body["still_running"] == [running["job_id"]]
    for job in pending:
        assert api.status(job["job_id"])["status"] == "cancelled"
    assert api.get("/api/queue").json()["queue"]["queue_pending"] == []
    assert api.wait_final(running["job_id"])["status"] == "completed"


def test_unknown_and_finished_jobs(api):
    assert api.session.delete(f"{api.base}/api/queue/nope", timeout=30).status_code == 404
    done = api.generate(prompt="quick", **SHORT)
    api.wait_final(done["job_id"])
    response = api.session.delete(f"{api.base}/api/queue/{done['job_id']}", timeout=30)
    assert response.status_code == 409
    assert response.json()["job_status"] == "completed"


def test_outputs_list_new_files_first_and_pages(api):
    jobs = [api.generate(prompt=f"o{i}", **SHORT) for i in range(2)]
    finals = [api.wait_final(j["job_id"]) for j in jobs]
    newest = [finals[1]["output_image"], finals[0]["output_image"]]
    # The listing is refreshed in the background and trails the disk by up to ~0.5 s.
    body = wait_for(
        lambda: (b := api.get("/api/outputs?limit=2").json())["images"] == newest and b,
        10,
        0.05,
        "the new images to be listed first",
    )
    assert body["total"] >= 2 and body["limit"] == 2
    second_page = api.get("/api/outputs?limit=1&offset=1").json()
    assert second_page["images"] == [finals[0]["output_image"]]
    assert api.get("/api/outputs?limit=0").status_code == 400
    assert api.get("/api/outputs?offset=-1").status_code == 400


def test_job_image_by_id_and_index_and_save(api, comfy):
    job = api.generate(prompt="pair", batch_size=2, **SHORT)
    final = api.wait_final(job["job_id"])
    second = final["images"][1]
    by_index = api.get(f"/api/image/{job['job_id']}?index=1")
    assert by_index.content == (comfy.output_dir / second["name"]).read_bytes()
    assert api.get(f"/api/image/{job['job_id']}?index=2").status_code == 400

    name = f"keep-{job['job_id'][:8]}"
    saved = api.post(f"/api/save/{job['job_id']}", json={"filename": name})
    assert saved.status_code == 201
    assert saved.json()["filename"] == f"{name}.png"
    assert (comfy.output_dir / f"{name}.png").read_bytes() == (
        comfy.output_dir / final["images"][0]["name"]
    ).read_bytes()
    assert api.post(f"/api/save/{job['job_id']}", json={"filename": name}).status_code == 409
    renamed = api.post(f"/api/save/{job['job_id']}", json={"filename": name, "rename": True})
    assert renamed.json()["filename"] == f"{name}_1.png"
    for bad in ("../evil", "a/b", "/etc/x", ".hidden", ""):
        response = api.post(f"/api/save/{job['job_id']}", json={"filename": bad})
        assert response.status_code == 400, bad
    assert api.post("/api/save/nope", json={"filename": "x"}).status_code == 404


def test_generate_with_save_to_disk_and_base64(api, comfy):
    name = "auto-saved-check"
    job = api.generate(
        prompt="save me", save_to_disk=True, filename=name, include_base64=True, **SHORT
    )
    final = wait_for(
        lambda: (s := api.status(job["job_id"]))["options"].get("saved_as") and s,
        30,
        0.05,
        "the copy to be saved",
    )
    saved = comfy.output_dir / final["options"]["saved_as"]
    assert saved.name.startswith(name) and saved.read_bytes()
    import base64

    assert (
        base64.b64decode(final["images"][0]["base64"])
        == (comfy.output_dir / final["images"][0]["name"]).read_bytes()
    )


def test_jobs_listing_filters(api):
    job = api.generate(prompt="listed", **SHORT)
    api.wait_final(job["job_id"])
    body = api.get("/api/jobs?status=completed&limit=5").json()
    assert all(j["status"] == "completed" for j in body["jobs"])
    assert body["total"] >= 1 and len(body["jobs"]) <= 5
    assert api.get("/api/jobs?status=done").status_code == 400


def test_workflows_describe_their_parameters(api):
    body = api.get("/api/workflows").json()
    assert "flux2_turbo_default" in body["workflows"] and body["total"] == len(body["workflows"])
    detail = api.get("/api/workflows/flux2_turbo_default").json()
    assert detail["parameters"]["steps"]["default"] == 8
    assert detail["parameters"]["width"]["multipleOf"] == 16
    assert api.get("/api/workflows/nope").status_code == 404


def test_system_reports_the_cpu_device_and_model_folders(api):
    body = api.get("/api/system").json()
    assert body["devices"][0]["type"] == "cpu"
    assert body["devices"][0]["vram"] > 0
    assert body["models"]["loras"] == []
    assert body["templates"]["flux2_turbo_default"]["ready"] is False
    status = api.get("/api/status").json()
    assert status["comfyui_available"] is True and status["uptime"] >= 0


def test_history_survives_a_comfyui_restart(api, comfy):
    job = api.generate(prompt="remember me", **SHORT)
    api.wait_final(job["job_id"])
    comfy.restart()
    wait_for(
        lambda: api.process.tracker_state()["websocket"] == "connected",
        60,
        0.1,
        "the tracker to reconnect",
    )
    history = api.get("/api/history?limit=50").json()
    assert job["prompt_id"] in history["history"]
    assert history["history"][job["prompt_id"]]["status"]["status_str"] == "success"
    assert history["total_items"] >= 1
    # ComfyUI's own history is empty now: the entry came from the sidecar's store.
    import requests

    assert requests.get(f"{comfy.url}/history/{job['prompt_id']}", timeout=10).json() == {}
