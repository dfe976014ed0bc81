"""Submissions that answer with their result (POST /api/generate?wait=, the raw-graph endpoint
too), against a real ComfyUI and the sidecar under real gunicorn: the job's end is the answer,
every way a job can end has its own status, and a wait that runs out loses nothing."""

import threading
import uuid

import pytest

from tests.support.sidecar import wait_for

pytestmark = pytest.mark.both_stores


def waited(api, wait: float | str = 30, **fields):
    """POST /api/generate?wait= of the test node that sleeps, with these fields."""
    return api.post(f"/api/generate?wait={wait}", json={"workflow": "sidecar_test_sleep", **fields})


def test_a_completed_job_is_the_answer_with_its_image(api, comfy):
    response = waited(api, prompt="in one request", steps=3, seconds_per_step=0.1)
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "completed" and done["progress"] == 1.0
    assert done["current_step"] == done["total_steps"] == 3
    assert done["error"] is None and done["finished_at"]
    assert response.headers["Location"] == done["status_url"]
    # The same job as its status says, not a copy that drifts from it.
    assert api.status(done["job_id"])["version"] == done["version"]
    image = api.get(done["image_url"])
    assert image.status_code == 200
    folder = f"{done['node']}/" if done.get("node") else ""
    assert done["output_image"].startswith(folder + "SidecarTest_")
    assert image.content == (comfy.output_dir / done["output_image"]).read_bytes()


def test_a_failed_job_is_a_500_with_comfyuis_error(api):
    response = waited(api, prompt="fail now", steps=3, seconds_per_step=0.05, fail_at_step=1)
    body = response.json()
    assert response.status_code == 500, body
    assert body["code"] == "job_failed" and body["status"] == "failed"
    assert "forced failure at step 1" in body["error"]
    assert body["job"]["job_id"] == body["job_id"] and body["job"]["output_image"] is None
    assert api.status(body["job_id"])["status"] == "failed"


def test_a_job_stopped_at_its_deadline_is_a_504(api):
    response = waited(api, prompt="too slow", steps=100, seconds_per_step=0.1, timeout_minutes=0.02)
    body = response.json()
    assert response.status_code == 504, body
    assert body["code"] == "job_timed_out"
    assert body["error"].startswith("Job timed out after 0.02 minutes")


def test_a_job_cancelled_while_its_submission_waits_is_a_409(api):
    prompt = f"cancel me {uuid.uuid4().hex[:8]}"
    answer = {}

    def submit():
        answer["response"] = waited(api, prompt=prompt, steps=100, seconds_per_step=0.1)

    waiting = threading.Thread(target=submit)
    waiting.start()
    job = wait_for(
        lambda: next(
            (j for j in api.get("/api/jobs?limit=20").json()["jobs"] if j["prompt"] == prompt),
            None,
        ),
        30,
        0.05,
        "the waiting submission's job",
    )
    assert api.delete(f"/api/queue/{job['job_id']}").status_code == 200
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    body = answer["response"].json()
    assert answer["response"].status_code == 409, body
    assert body["code"] == "job_cancelled" and body["job_id"] == job["job_id"]


def test_a_wait_that_runs_out_answers_202_and_the_job_goes_on(api):
    response = waited(api, wait=0.2, prompt="longer than the wait", steps=4, seconds_per_step=0.25)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] in ("queued", "processing")
    assert response.headers["Location"] == accepted["status_url"]
    assert api.wait_final(accepted["job_id"])["status"] == "completed"


def test_the_answer_waits_for_the_saved_copy(api, comfy):
    response = waited(api, prompt="kept", filename="waited-for", steps=1, seconds_per_step=0)
    assert response.status_code == 200, response.text
    saved = response.json()["options"]["saved_as"]
    assert saved.split("/")[-1].startswith("waited-for")
    assert (comfy.output_dir / saved).read_bytes()


def test_a_bad_wait_is_a_400_and_submits_nothing(api, job_count):
    before = job_count()
    for wait in ("soon", "-1", "1e9", "nan"):
        response = waited(api, wait=wait, prompt="x")
        assert response.status_code == 400, (wait, response.text)
        assert response.json()["code"] == "invalid_request"
        assert "wait" in response.json()["error"]
    assert job_count() == before


def test_a_client_that_asks_for_the_image_gets_it_as_the_answer(api, comfy):
    response = api.post(
        "/api/generate?wait=30",
        json={"workflow": "sidecar_test_sleep", "prompt": "image out", "steps": 2},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    job = api.status(response.headers["X-Job-ID"])
    assert job["status"] == "completed"
    assert response.headers["Content-Location"] == job["image_url"]
    assert response.content == (comfy.output_dir / job["output_image"]).read_bytes()
