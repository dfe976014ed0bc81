"""The progress WebSocket /ws/progress/<job_id>, over a real socket against the real stack."""

import json
import time

import pytest
import websocket

from tests.integration.conftest import Api
from tests.support.sidecar import wait_for

SHAPE = {"job_id", "status", "progress", "step", "max_steps", "message", "image_url", "error"}


@pytest.fixture(scope="module")
def api(sidecar) -> Api:
    """The sidecar on gunicorn's own port, even where the shared `api` fixture also goes
    through a proxy: what a proxy in front needs for these routes is its own configuration's
    concern (docs/ui.md says what that is)."""
    return Api(sidecar.url)


def ws_url(api, job_id: str) -> str:
    return api.base.replace("http://", "ws://", 1) + f"/ws/progress/{job_id}"


def read_until_closed(ws) -> tuple[list[dict], int]:
    """Every message until the server closes; returns them and the close code."""
    messages = []
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return messages, int.from_bytes(data[:2], "big")
        messages.append(json.loads(data))


def test_messages_follow_the_job_then_the_server_closes(api):
    # 4 s: the tracker writes at most one step a second, with the first step that comes after
    # that second: steps 1, 3, 5, 7 and 8 here. Three distinct ones leave room for a loaded
    # host, where a socket woken for a step may read the row after a later change (the last
    # step is often read already completed; a 2.4 s job could then show two).
    job = api.generate(
        prompt="socket", workflow="sidecar_test_sleep", steps=8, seconds_per_step=0.5
    )
    ws = websocket.create_connection(ws_url(api, job["job_id"]), timeout=30)
    try:
        messages, code = read_until_closed(ws)
    finally:
        ws.close()
    assert code == 1000
    assert all(set(m) == SHAPE for m in messages), messages[0]
    assert all(m["job_id"] == job["job_id"] for m in messages)
    progress = [m["progress"] for m in messages]
    assert progress == sorted(progress), "progress went backwards"
    steps = [m["step"] for m in messages if m["status"] == "processing" and m["step"]]
    assert len(set(steps)) >= 3, f"too few progress messages: {steps}"
    assert {m["max_steps"] for m in messages if m["step"]} == {8}
    # Steps sooner than the tracker's PROGRESS_GAP after the last one recorded are folded
    # into the next: which steps arrive depends on timing, how each one reads does not.
    running = [m for m in messages if m["status"] == "processing" and m["step"]]
    assert all(m["message"] == f"Step {m['step']} of 8" for m in running), running
    final = messages[-1]
    assert final["status"] == "completed" and final["message"] == "Completed"
    assert final["progress"] == 1.0 and final["error"] is None
    # The session's connection sat idle for the whole run, about as long as gunicorn keeps an
    # idle one (5 s): a new connection, not one the server may be closing at that moment.
    api.session.close()
    assert api.get(final["image_url"]).status_code == 200
    assert len({json.dumps(m) for m in messages}) == len(messages), "a message was repeated"


def test_a_failing_and_a_cancelled_job_end_the_socket_too(api):
    failing = api.generate(
        prompt="f", workflow="sidecar_test_sleep", steps=4, seconds_per_step=0.1, fail_at_step=2
    )
    ws = websocket.create_connection(ws_url(api, failing["job_id"]), timeout=30)
    messages, code = read_until_closed(ws)
    ws.close()
    assert code == 1000 and messages[-1]["status"] == "failed"
    assert "forced failure at step 2" in messages[-1]["error"]
    assert messages[-1]["message"].startswith("Failed: ")

    long = api.generate(prompt="c", workflow="sidecar_test_sleep", steps=100, seconds_per_step=0.1)
    ws = websocket.create_connection(ws_url(api, long["job_id"]), timeout=30)
    first = json.loads(ws.recv())
    assert first["status"] in ("queued", "processing")
    wait_for(lambda: api.status(long["job_id"])["progress"] > 0, 30, 0.05, "the job to run")
    api.session.delete(f"{api.base}/api/queue/{long['job_id']}", timeout=30)
    messages, code = read_until_closed(ws)
    ws.close()
    assert code == 1000 and messages[-1]["status"] == "cancelled"


def test_unknown_job_is_a_404_and_plain_http_a_426(api):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(api, "nope"), timeout=10)
    assert refused.value.status_code == 404
    plain = api.get("/ws/progress/nope")
    assert plain.status_code == 426
    assert plain.json()["code"] == "upgrade_required"


def test_a_client_that_goes_away_frees_its_place(api, sidecar):
    """Sockets count against MAX_WATCHERS; one the client drops is released, not leaked."""
    long = api.generate(
        prompt="idle", workflow="sidecar_test_sleep", steps=100, seconds_per_step=0.1
    )
    # 2 workers x 12 places: were closed sockets still holding theirs, one worker would hold
    # 15 or more of these 30 and answer 429. A server notices a close within 0.1 s.
    for _ in range(30):
        ws = websocket.create_connection(ws_url(api, long["job_id"]), timeout=10)
        assert json.loads(ws.recv())["job_id"] == long["job_id"]
        ws.close()
        time.sleep(0.15)
    api.session.delete(f"{api.base}/api/queue/{long['job_id']}", timeout=30)
    assert api.wait_final(long["job_id"])["status"] == "cancelled"


def test_through_the_shipped_nginx(api, nginx):
    """nginx passes the upgrade on (its /ws/ location) and the messages through unbuffered."""
    job = api.generate(
        prompt="via nginx", workflow="sidecar_test_sleep", steps=5, seconds_per_step=0.1
    )
    url = nginx.url.replace("http://", "ws://", 1) + f"/ws/progress/{job['job_id']}"
    ws = websocket.create_connection(url, timeout=30)
    messages, code = read_until_closed(ws)
    ws.close()
    assert code == 1000 and messages[-1]["status"] == "completed"
    assert len({m["step"] for m in messages if m["step"]}) >= 2
