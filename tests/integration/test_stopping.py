"""A sidecar stopped while clients wait on its jobs (SIGTERM: a restart, a reload, `docker
compose up` with a new image), under real gunicorn against a real ComfyUI: the waits end at
once with what they have, instead of holding the stop until the worker is killed, and the
job goes on to its end once a sidecar is back."""

import os
import signal
import threading
import time

import requests

from tests.support.sidecar import wait_for
from tests.support.sse import server_sent_events

# Longer than gunicorn's graceful_timeout (20 s): cut off at its end, before this change.
SLOW = {"workflow": "sidecar_test_sleep", "steps": 22, "seconds_per_step": 1.0}


def job_of_prompt(api, prompt: str) -> dict | None:
    return next((j for j in api.get("/api/jobs").json()["jobs"] if j["prompt"] == prompt), None)


def test_waiting_clients_are_answered_when_the_sidecar_stops_and_nothing_is_lost(own_sidecar):
    process, _, api = own_sidecar()
    answers: dict[str, object] = {}

    def submission_that_waits():
        try:
            response = requests.post(
                f"{process.url}/api/generate?wait=60",
                json={**SLOW, "prompt": "waits through a stop"},
                timeout=90,
            )
            answers["waited"] = (response.status_code, response.json())
        except requests.RequestException as exc:
            answers["waited"] = exc

    waiter = threading.Thread(target=submission_that_waits)
    waiter.start()
    job = wait_for(lambda: job_of_prompt(api, "waits through a stop"), 30, message="the job")
    events: list[tuple[str, dict]] = []
    following = threading.Event()

    def stream():
        url = f"{process.url}/api/status/{job['job_id']}/events"
        with requests.get(url, stream=True, timeout=90) as response:
            for event in server_sent_events(response):
                events.append(event)
                following.set()

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert following.wait(30)  # the stream's snapshot came

    stopped = time.monotonic()
    os.kill(process._proc.pid, signal.SIGTERM)
    for thread in (waiter, streaming):
        thread.join(30)
    process._proc.wait(30)
    gone_after = time.monotonic() - stopped

    # Answered as a wait that ran out: a 202 with the job to follow (not cut off).
    assert isinstance(answers["waited"], tuple), answers["waited"]
    status, body = answers["waited"]
    assert status == 202, body
    assert body["job_id"] == job["job_id"] and body["status"] in ("queued", "processing")
    # The stream says to reconnect, and why.
    kind, data = events[-1]
    assert kind == "expired" and "restarting" in data["reason"], events[-3:]
    assert gone_after < 10, f"gunicorn took {gone_after:.1f} s to stop"

    # Nothing lost: a sidecar on the same state follows the job to its end.
    process.start()
    assert api.wait_final(job["job_id"], timeout=120)["status"] == "completed"
