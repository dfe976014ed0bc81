"""Event streams and long polls, against the real ComfyUI."""

import time

import pytest

from tests.support.sidecar import wait_for
from tests.support.sse import server_sent_events

pytestmark = pytest.mark.both_stores


def read_events(response) -> list[tuple[str, dict]]:
    """Parse a server-sent event stream until it closes."""
    return list(server_sent_events(response))


def test_event_stream_snapshot_updates_in_order_then_end(api):
    # 2.4 s: long enough for a step between the first and the last to be written (the tracker
    # writes at most one step a second, with the first step that comes after that second).
    job = api.generate(
        prompt="stream", workflow="sidecar_test_sleep", steps=8, seconds_per_step=0.3
    )
    with api.session.get(
        f"{api.base}/api/status/{job['job_id']}/events", stream=True, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "end"
    assert set(kinds[1:-1]) <= {"update"}
    progress = [body["progress"] for _, body in events]
    assert progress == sorted(progress), "progress went backwards"
    steps = [body["current_step"] for _, body in events if body["status"] == "processing"]
    assert len(set(steps)) >= 3, f"too few progress events: {steps}"
    final = events[-1][1]
    assert final["status"] == "completed" and final["image_url"]
    assert api.get(final["image_url"]).status_code == 200


def test_event_stream_of_a_failing_and_a_cancelled_job_ends(api):
    failing = api.generate(
        prompt="f", workflow="sidecar_test_sleep", steps=4, seconds_per_step=0.1, fail_at_step=2
    )
    with api.session.get(
        f"{api.base}/api/status/{failing['job_id']}/events", stream=True, timeout=60
    ) as response:
        events = read_events(response)
    assert events[-1][0] == "end" and events[-1][1]["status"] == "failed"

    long = api.generate(prompt="c", workflow="sidecar_test_sleep", steps=100, seconds_per_step=0.1)
    with api.session.get(
        f"{api.base}/api/status/{long['job_id']}/events", stream=True, timeout=60
    ) as response:
        lines = response.iter_lines(decode_unicode=True)
        assert next(lines) == "retry: 2000"
        wait_for(
            lambda: api.status(long["job_id"])["status"] == "processing",
            30,
            0.05,
            "the job to start",
        )
        api.session.delete(f"{api.base}/api/queue/{long['job_id']}", timeout=30)
        events = read_events(response)
    assert events[-1][0] == "end" and events[-1][1]["status"] == "cancelled"


def test_long_poll_answers_on_change_and_on_timeout(api):
    job = api.generate(prompt="poll", workflow="sidecar_test_sleep", steps=10, seconds_per_step=0.3)
    first = api.status(job["job_id"])
    started = time.monotonic()
    changed = api.get(f"/api/status/{job['job_id']}?wait=20&since={first['version']}").json()
    assert time.monotonic() - started < 15
    assert changed["version"] != first["version"]

    final = api.wait_final(job["job_id"])
    started = time.monotonic()
    again = api.get(f"/api/status/{job['job_id']}?wait=20").json()
    assert time.monotonic() - started < 5, "a finished job answers at once"
    assert again["status"] == final["status"]


def test_long_poll_runs_out_and_bad_waits_are_400(api):
    running = api.generate(
        prompt="idle", workflow="sidecar_test_sleep", steps=60, seconds_per_step=0.1
    )
    wait_for(lambda: api.status(running["job_id"])["progress"] > 0, 30, 0.05, "progress")
    # A pending job behind it does not change while it waits.
    pending = api.generate(
        prompt="behind", workflow="sidecar_test_sleep", steps=1, seconds_per_step=0
    )
    version = wait_for(
        lambda: (s := api.status(pending["job_id"]))["queue_position"] == 1 and s["version"],
        10,
        0.05,
        "the queue position",
    )
    started = time.monotonic()
    same = api.get(f"/api/status/{pending['job_id']}?wait=1&since={version}").json()
    assert 0.9 < time.monotonic() - started < 5
    assert same["version"] == version
    for bad in ("abc", "-1", "100000"):
        assert api.get(f"/api/status/{pending['job_id']}?wait={bad}").status_code == 400
    api.session.delete(f"{api.base}/api/queue/{running['job_id']}", timeout=30)
    assert api.wait_final(pending["job_id"])["status"] == "completed"


def test_unknown_job_stream_is_404(api):
    assert api.get("/api/status/nope/events").status_code == 404
    assert api.get("/api/status/nope?wait=1").status_code == 404
