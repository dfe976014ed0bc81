"""The ComfyUI client against real 2024 ComfyUI answers (tests/fixtures/comfyui-2024)."""

import json
from pathlib import Path

import pytest
import requests
import responses

from api import comfyui
from api import exceptions as exc
from api.config import Config
from api.job import JobStatus
from api.sqlite_store import SQLiteJobStore
from api.tracker import Tracker
from tests.support.jobs import add_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-2024"
URL = "http://comfy.test:8188"


def body_of(name: str) -> str:
    return (FIXTURES / name).read_text()


def exchange(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def client():
    return comfyui.ComfyUIClient(URL, (1.0, 2.0))


@responses.activate
def test_submit_returns_comfyuis_prompt_id_even_when_it_ignores_ours(client):
    responses.post(f"{URL}/prompt", body=body_of("prompt_ok.json"), content_type="application/json")
    submitted = client.submit({"1": {}}, "client-1", prompt_id="ours")
    assert submitted.prompt_id == json.loads(body_of("prompt_ok.json"))["prompt_id"]
    sent = json.loads(responses.calls[0].request.body)
    assert sent["client_id"] == "client-1" and sent["prompt_id"] == "ours"


@responses.activate
def test_calls_carry_the_sidecars_name_their_json_and_their_query(client):
    # Built without a Session (api/comfyui.py, _request): what a Session would have sent.
    responses.post(f"{URL}/prompt", body=body_of("prompt_ok.json"), content_type="application/json")
    responses.get(f"{URL}/history", json={})
    client.submit({"1": {}}, "client-1")
    client.recent_history(64)
    post, get = (call.request for call in responses.calls)
    assert post.headers["User-Agent"] == get.headers["User-Agent"] == "comfy-sidecar"
    assert post.headers["Content-Type"] == "application/json"
    assert int(post.headers["Content-Length"]) == len(post.body)
    assert json.loads(post.body)["client_id"] == "client-1"
    assert get.url == f"{URL}/history?max_items=64" and get.body is None


@responses.activate
def test_missing_model_on_the_2024_server_becomes_a_readable_rejection(client):
    ex = exchange("prompt_sd15_missing_model.json")
    responses.post(f"{URL}/prompt", status=ex["status"], json=ex["body"])
    with pytest.raises(exc.ComfyUIRejected) as caught:
        client.submit({}, "c")
    assert caught.value.message == (
        "ComfyUI rejected the workflow: missing model file 'nope.safetensors' for "
        "CheckpointLoaderSimple (node 4, input ckpt_name): put it in models/checkpoints/"
    )
    assert caught.value.node_errors == ex["body"]["node_errors"]


@responses.activate
def test_no_outputs_and_plain_string_errors_are_rejections(client):
    ex = exchange("prompt_no_outputs.json")
    responses.post(f"{URL}/prompt", status=400, json=ex["body"])
    with pytest.raises(exc.ComfyUIRejected, match="Prompt has no outputs"):
        client.submit({}, "c")
    responses.replace(
        responses.POST, f"{URL}/prompt", status=400, json=exchange("prompt_no_prompt.json")["body"]
    )
    with pytest.raises(exc.ComfyUIRejected, match="no prompt"):
        client.submit({}, "c")


@responses.activate
def test_the_2024_servers_500_for_an_unknown_node_is_a_server_error(client):
    ex = exchange("prompt_unknown_node.json")
    responses.post(f"{URL}/prompt", status=500, body=ex["body"], content_type="text/plain")
    with pytest.raises(exc.ComfyUIServerError) as caught:
        client.submit({}, "c")
    assert caught.value.status == 500


@responses.activate
def test_unknown_node_classes_are_found_before_submitting(client):
    responses.get(f"{URL}/object_info", json={"EmptyImage": {}, "SaveImage": {}})
    graph = {
        "1": {"class_type": "EmptyImage"},
        "2": {"class_type": "FluxGuidance"},
        "3": {"class_type": "SaveImage"},
    }
    with pytest.raises(exc.ComfyUIRejected) as caught:
        client.check_node_classes(graph)
    assert "FluxGuidance (node 2)" in caught.value.message
    # Cached, but refetched once on a miss in case a custom node was just installed.
    assert len(responses.calls) == 2
    client.check_node_classes({"1": {"class_type": "EmptyImage"}})
    assert len(responses.calls) == 2


@responses.activate
def test_queue_pending_is_sorted_by_number(client):
    raw = json.loads(body_of("queue_running.json"))
    raw["queue_pending"] = list(
        reversed(raw["queue_pending"] + [[99, "x", {}, {}, []], [6, "y", {}, {}, []]])
    )
    responses.get(f"{URL}/queue", json=raw)
    queue = client.queue()
    numbers = [item[0] for item in queue.pending]
    assert numbers == sorted(numbers)
    # Running is place 0; the pending prompts count from 1 in the order ComfyUI runs them.
    assert queue.position_of(raw["queue_running"][0][1]) == 0
    assert queue.position_of("y") == 1 + sum(1 for n in numbers if n < 6)
    assert queue.position_of("not-there") is None
    assert queue.as_contract()["queue_pending"][0] == [numbers[0], queue.pending[0][1]]


@responses.activate
def test_history_of_an_unknown_prompt_is_none(client):
    responses.get(f"{URL}/history/abc", body=body_of("history_not_found.json"))
    assert client.history("abc") is None


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (requests.ConnectionError("refused"), exc.ComfyUIUnreachable),
        (requests.ConnectTimeout("slow connect"), exc.ComfyUIUnreachable),
        (requests.ReadTimeout("slow answer"), exc.ComfyUITimeout),
    ],
)
@responses.activate
def test_transport_failures_map_to_the_exception_family(client, failure, expected):
    responses.get(f"{URL}/system_stats", body=failure)
    with pytest.raises(expected):
        client.system_stats()


@responses.activate
def test_non_json_answer_is_a_server_error(client):
    responses.get(f"{URL}/system_stats", body="<html>proxy error</html>", status=200)
    with pytest.raises(exc.ComfyUIServerError, match="non-JSON"):
        client.system_stats()


def replay(tracker: Tracker, name: str) -> None:
    for line in body_of(name).splitlines():
        message = json.loads(line)
        tracker.handle_event(message["type"], message["data"])


@pytest.mark.parametrize(
    ("events", "history", "status", "error"),
    [
        ("ws_events_success.jsonl", "history_success.json", JobStatus.COMPLETED, None),
        (
            "ws_events_error.jsonl",
            "history_error.json",
            JobStatus.FAILED,
            "SidecarSleepProgress (node 2) raised RuntimeError: SidecarSleepProgress: forced"
            " failure at step 2",
        ),
        (
            "ws_events_interrupted.jsonl",
            "history_interrupted.json",
            JobStatus.CANCELLED,
            "Cancelled: interrupted in ComfyUI",
        ),
    ],
)
@responses.activate
def test_recorded_event_streams_settle_the_job(tmp_path, events, history, status, error):
    """Replays what the 2024 server really sent, then checks the job ends as ComfyUI says."""
    prompt_id = next(iter(json.loads(body_of(history))))
    responses.get(f"{URL}/history/{prompt_id}", body=body_of(history))
    config = Config.from_env({"COMFYUI_HOST": "comfy.test", "WORKSPACE_PATH": str(tmp_path)})
    store = SQLiteJobStore(config.database_path)
    add_job(store, "j", prompt_id, submitted=True)
    replay(Tracker(config, store, comfyui.ComfyUIClient(URL, (1.0, 2.0)), "c"), events)
    job = store.get("j")
    assert job.status == status
    assert job.error == error
    if status == JobStatus.COMPLETED:
        assert job.outputs and job.total_steps == 5 and job.progress == 1.0
