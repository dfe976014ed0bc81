"""The tracker turns ComfyUI events and history into job state (fake ComfyUI, real SQLite)."""

import errno
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import responses
import websocket

from api import tracker as tracker_module
from api.comfyui import ComfyUIClient
from api.config import Config
from api.exceptions import ComfyUIUnreachable, StoreUnavailable
from api.job import Job, JobStatus
from api.jobstore import JobStore
from api.outcome import collect_outputs, outcome_of
from api.sqlite_store import SQLiteJobStore
from api.tracker import Tracker
from tests.support import jobs
from tests.support.comfyui import free_port
from tests.support.sidecar import wait_for
from tests.unit.conftest import COMFY

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}
SUCCESS = {
    "prompt": [0, "p1", GRAPH, {"client_id": "c"}, ["3"]],
    "outputs": {
        "3": {
            "images": [
                {"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                {"filename": "a_00002_.png", "subfolder": "", "type": "output"},
            ]
        },
        "7": {"images": [{"filename": "b_00001_.png", "subfolder": "sub", "type": "output"}]},
    },
    "status": {"status_str": "success", "completed": True, "messages": []},
}
ERROR = {
    "prompt": [1, "p1", GRAPH, {}, ["3"]],
    "outputs": {},
    "status": {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": "p1"}],
            [
                "execution_error",
                {
                    "prompt_id": "p1",
                    "node_id": "2",
                    "node_type": "SidecarSleepProgress",
                    "exception_type": "RuntimeError",
                    "exception_message": "boom\n",
                },
            ],
        ],
    },
}


@pytest.fixture
def tracker(tmp_path):
    config = Config.from_env(
        {"COMFYUI_HOST": "comfy.test", "WORKSPACE_PATH": str(tmp_path), "LOST_JOB_GRACE": "5"}
    )
    return make_tracker(config)


def make_tracker(config: Config, client_id: str = "client-1") -> Tracker:
    client = ComfyUIClient(config.comfyui_url, config.comfyui_timeout)
    return Tracker(config, SQLiteJobStore(config.database_path), client, client_id)


RUN_WRITES = ("mark_processing", "record_progress", "finish")


def count_writes(store: JobStore, monkeypatch, names=RUN_WRITES) -> list[str]:
    """The names of the store's calls among `names` (by default its writes of a run's state:
    start, node, step, end), in order."""
    writes: list[str] = []

    def counted(name: str):
        method = getattr(store, name)
        return lambda *args, **kwargs: writes.append(name) or method(*args, **kwargs)

    for name in names:
        monkeypatch.setattr(store, name, counted(name))
    return writes


def add_job(store: JobStore, job_id="j1", prompt_id="p1", submitted=True) -> Job:
    return jobs.add_job(
        store, job_id, prompt_id, submitted=submitted, client_id="client-1", graph=GRAPH
    )


def test_progress_is_written_at_most_every_gap_and_the_held_step_is_not_lost(tracker, monkeypatch):
    store = tracker.store
    add_job(store)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    tracker.handle_event("progress", {"value": 1, "max": 8, "prompt_id": "p1"})
    assert store.get("j1").current_step == 1  # the first step: at once
    tracker.handle_event("progress", {"value": 2, "max": 8, "prompt_id": "p1"})
    tracker.handle_event("progress", {"value": 3, "max": 8, "prompt_id": "p1"})
    assert store.get("j1").current_step == 1  # held
    tracker.handle_event("progress", {"value": 8, "max": 8, "prompt_id": "p1"})
    assert store.get("j1").current_step == 8  # the last step: at once
    # The running node too: a newer node replaces a held one, whose steps are written first.
    tracker.handle_event("executing", {"node": "5", "prompt_id": "p1"})
    tracker.handle_event("progress", {"value": 1, "max": 4, "prompt_id": "p1", "node": "5"})
    tracker.handle_event("executing", {"node": "6", "prompt_id": "p1"})
    job = store.get("j1")
    assert (job.current_node, job.current_step) == ("5", 1)
    tracker.handle_event("executed", {"node": "6", "prompt_id": "p1", "output": {}})
    assert store.get("j1").current_node == "5"  # an event that writes nothing: still held
    tracker.handle_event("execution_interrupted", {"prompt_id": "p1", "node_id": "6"})
    job = store.get("j1")
    assert (job.status, job.current_node) == (JobStatus.CANCELLED, "6")  # written first

    # The socket goes quiet after a held step: no step comes after the gap to write it, so it
    # is written by a timer another gap later (twice the gap shorter than a quiet socket's
    # wait, RECONCILE_INTERVAL / 2, to tell the two apart).
    monkeypatch.setattr(tracker_module, "PROGRESS_GAP", 0.3)
    add_job(store, "j2", "p2")
    frames = [
        {"type": "execution_start", "data": {"prompt_id": "p2"}},
        {"type": "progress", "data": {"value": 1, "max": 8, "prompt_id": "p2"}},
        {"type": "progress", "data": {"value": 2, "max": 8, "prompt_id": "p2"}},
    ]
    quiet = QuietAfter(tracker, frames)
    tracker._read(quiet)
    assert store.get("j2").current_step == 2
    # It waited for the held step longer than the gap, no longer than two, and wrote it (no
    # ping: the socket had just brought frames), then waited as a quiet socket is waited for.
    (held, waited), (after, waited_after), *rest = quiet.calls
    assert held == after == "wait"
    gap = tracker_module.PROGRESS_GAP
    assert gap < waited <= 2 * gap < waited_after
    assert rest == [("ping", None)]


class QuietAfter:
    """A WebSocket that brings `frames`, then nothing: each read waits out the timeout the
    tracker set (as a quiet socket does) and times out; the tracker is stopped at the first
    wait longer than twice the progress gap (it is no longer waiting for a held step)."""

    def __init__(self, tracker: Tracker, frames: list[dict]) -> None:
        self.tracker, self.frames = tracker, list(frames)
        self.timeout, self.calls = None, []

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def ping(self) -> None:
        self.calls.append(("ping", None))

    def recv_data_frame(self, _control: bool):
        if self.frames:
            return websocket.ABNF.OPCODE_TEXT, SimpleNamespace(data=json.dumps(self.frames.pop(0)))
        self.calls.append(("wait", self.timeout))
        if self.timeout > 2 * tracker_module.PROGRESS_GAP:
            self.tracker._stop.set()
        else:
            threading.Event().wait(self.timeout)  # what the real socket does when quiet
        raise websocket.WebSocketTimeoutException("quiet")


def test_events_move_a_job_through_processing_to_completed(tracker, fake_comfy, monkeypatch):
    monkeypatch.setattr(tracker_module, "PROGRESS_GAP", 0.0)  # each event written at once
    store = tracker.store
    add_job(store)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    assert store.get("j1").status == JobStatus.PROCESSING
    tracker.handle_event("executing", {"node": "2", "prompt_id": "p1"})
    tracker.handle_event("progress", {"value": 3, "max": 8, "prompt_id": "p1", "node": "13"})
    job = store.get("j1")
    assert (job.progress, job.current_step, job.total_steps) == (0.375, 3, 8)
    # An old server's progress event carries no prompt_id: it belongs to the running prompt.
    tracker.handle_event("progress", {"value": 5, "max": 8})
    assert store.get("j1").current_step == 5
    # Progress never goes backwards at job level, even if a later node restarts its count.
    tracker.handle_event("progress", {"value": 1, "max": 8, "prompt_id": "p1"})
    assert store.get("j1").progress == 0.625

    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": SUCCESS})
    tracker.handle_event("executing", {"node": None, "prompt_id": "p1"})
    job = store.get("j1")
    assert job.status == JobStatus.COMPLETED
    assert job.progress == 1.0
    assert [o["filename"] for o in job.outputs] == [
        "a_00001_.png",
        "a_00002_.png",
        "b_00001_.png",
    ]


def follow_run(tracker, cached: list[str], end: bool = True) -> None:
    """The events of one whole run of p1, as ComfyUI sends them to its client (without its
    last, `executing` null, unless `end`)."""
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    tracker.handle_event("execution_cached", {"nodes": cached, "prompt_id": "p1"})
    tracker.handle_event("executing", {"node": "3", "prompt_id": "p1"})
    for node in ("3", "7"):
        output = SUCCESS["outputs"][node]
        tracker.handle_event("executed", {"node": node, "output": output, "prompt_id": "p1"})
    if end:
        tracker.handle_event("executing", {"node": None, "prompt_id": "p1"})


def test_a_run_followed_whole_is_settled_from_its_events_without_asking_comfyui(
    tracker, fake_comfy
):
    add_job(tracker.store)
    follow_run(tracker, cached=[])  # the fake answers nothing: a /history call would fail
    job = tracker.store.get("j1")
    assert job.status == JobStatus.COMPLETED
    assert job.outputs == collect_outputs(SUCCESS["outputs"])


def test_a_run_that_ends_as_its_job_records_the_prompt_is_settled_at_once(
    tracker, fake_comfy, monkeypatch
):
    # The answer to the job's POST /prompt is recorded between the tracker's look for the
    # run's job (none has the prompt yet) and its look whether one does now: settled at once,
    # not left to the next reconciliation (the fake answers nothing: /history would fail).
    store = tracker.store
    add_job(store)
    follow_run(tracker, cached=[], end=False)
    find, looks = store.find_by_prompt, []

    def recorded_after_the_first_look(prompt_id):
        looks.append(prompt_id)
        return None if len(looks) == 1 else find(prompt_id)

    monkeypatch.setattr(store, "find_by_prompt", recorded_after_the_first_look)
    tracker.handle_event("executing", {"node": None, "prompt_id": "p1"})
    assert store.get("j1").status == JobStatus.COMPLETED


def test_a_runs_last_node_is_recorded_with_its_end_not_in_a_write_of_its_own(
    tracker, fake_comfy, monkeypatch
):
    store = tracker.store
    add_job(store)
    writes = count_writes(store, monkeypatch)
    follow_run(tracker, cached=[])  # node 3 runs within PROGRESS_GAP of the start: held
    job = store.get("j1")
    assert (job.status, job.current_node) == (JobStatus.COMPLETED, "3")
    assert writes == ["mark_processing", "finish"]  # the start, then the end with its node


def test_a_run_that_ends_before_its_job_records_the_prompt_id_is_settled_once_it_does(
    tracker, fake_comfy
):
    # ComfyUI servers before 2026 ignore the prompt_id the sidecar asks for; a job of a few
    # milliseconds can end before the answer to POST /prompt is committed.
    add_job(tracker.store, prompt_id="planned", submitted=False)
    follow_run(tracker, cached=[])  # no job has p1 yet (and the fake answers no /history)
    assert tracker.store.get("j1").status == JobStatus.QUEUED
    assert tracker.store.mark_submitted("j1", "p1", planned="planned")
    since = tracker.store.version("j1")[0]
    # Settled from the run's events, long before a reconciliation would have looked.
    assert tracker.store.wait_for_change("j1", since, timeout=5)
    job = tracker.store.get("j1")
    assert job.status == JobStatus.COMPLETED
    assert job.outputs == collect_outputs(SUCCESS["outputs"])
    # Its start found no row to write: recorded with its end.
    assert job.created_at <= job.started_at <= job.finished_at


def test_an_error_ending_a_run_whose_start_found_no_job_records_its_start(tracker, fake_comfy):
    add_job(tracker.store, prompt_id="planned", submitted=False)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    assert tracker.store.mark_submitted("j1", "p1", planned="planned")
    tracker.handle_event("execution_error", ERROR["status"]["messages"][1][1])
    job = tracker.store.get("j1")
    assert job.status == JobStatus.FAILED
    assert job.created_at <= job.started_at <= job.finished_at
    tracker.handle_event("executing", {"node": None, "prompt_id": "p1"})  # settled already


def test_a_pass_settling_a_run_whose_start_found_no_job_records_the_start_seen(tracker, fake_comfy):
    add_job(tracker.store, prompt_id="planned", submitted=False)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})  # no job has p1 yet
    assert tracker.store.mark_submitted("j1", "p1", planned="planned")
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": SUCCESS})  # no times: a 2024 server's
    assert tracker.settle_from_history("p1")  # as a reconciliation pass does
    job = tracker.store.get("j1")
    assert job.status == JobStatus.COMPLETED
    assert job.created_at <= job.started_at <= job.finished_at


def success_with(*messages: list) -> dict:
    """SUCCESS as a newer server writes it: with its status messages (and their times)."""
    return dict(SUCCESS, status={**SUCCESS["status"], "messages": list(messages)})


def test_a_job_settled_from_history_with_no_start_takes_the_runs_from_the_entry(
    tracker, fake_comfy
):
    jobs.add_job(tracker.store, submitted=True, graph=GRAPH, created_at=time.time() - 10)
    began = time.time() - 4
    entry = success_with(
        ["execution_start", {"prompt_id": "p1", "timestamp": int(began * 1000)}],
        ["execution_success", {"prompt_id": "p1", "timestamp": int(time.time() * 1000)}],
    )
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": entry})
    assert tracker.settle_from_history("p1")
    job = tracker.store.get("j1")
    assert job.status == JobStatus.COMPLETED
    assert began - 1 < job.started_at < began + 1


def test_a_job_settled_from_history_keeps_the_start_it_recorded(tracker, fake_comfy):
    add_job(tracker.store)
    tracker.store.mark_processing("p1")
    started = tracker.store.get("j1").started_at
    # 1970: not this run's
    entry = success_with(["execution_start", {"prompt_id": "p1", "timestamp": 1000}])
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": entry})
    assert tracker.settle_from_history("p1")
    assert tracker.store.get("j1").started_at == started


def test_a_run_with_a_cached_output_node_is_settled_from_history(tracker, fake_comfy):
    # Servers before late 2024 send no `executed` for an output node taken from the cache.
    fake_comfy.get(
        f"{COMFY}/object_info",
        json={"EmptyImage": {"output_node": False}, "SaveImage": {"output_node": True}},
    )
    tracker.client.cached_object_info()
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "9": {"class_type": "SaveImage", "inputs": {}},
    }
    jobs.add_job(tracker.store, "j1", "p1", submitted=True, client_id="client-1", graph=graph)
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": SUCCESS})
    follow_run(tracker, cached=["1", "9"])
    assert len(tracker.store.get("j1").outputs) == 3


def test_a_run_whose_start_this_connection_did_not_see_is_settled_from_history(tracker, fake_comfy):
    add_job(tracker.store)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    tracker.handle_event("execution_cached", {"nodes": [], "prompt_id": "p1"})
    tracker._run = None  # what a reconnection does: the run's earlier events are gone
    tracker.handle_event("executed", {"node": "7", "output": {}, "prompt_id": "p1"})
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": SUCCESS})
    tracker.handle_event("executing", {"node": None, "prompt_id": "p1"})
    assert len(tracker.store.get("j1").outputs) == 3


def test_execution_error_event_fails_the_job_with_comfyui_message(tracker):
    add_job(tracker.store)
    tracker.handle_event(
        "execution_error",
        {
            "prompt_id": "p1",
            "node_id": "9",
            "node_type": "VAELoader",
            "exception_type": "safetensors_rust.SafetensorError",
            "exception_message": "Error while deserializing header: HeaderTooSmall\n",
        },
    )
    job = tracker.store.get("j1")
    assert job.status == JobStatus.FAILED
    assert job.error == (
        "VAELoader (node 9) raised safetensors_rust.SafetensorError: "
        "Error while deserializing header: HeaderTooSmall"
    )


def test_events_for_other_clients_prompts_change_nothing(tracker):
    add_job(tracker.store)
    tracker.handle_event("execution_start", {"prompt_id": "someone-else"})
    tracker.handle_event("execution_interrupted", {"prompt_id": "someone-else"})
    assert tracker.store.get("j1").status == JobStatus.QUEUED


def test_reconcile_finishes_jobs_whose_events_were_all_lost(tracker, fake_comfy):
    add_job(tracker.store, "j1", "p1")
    add_job(tracker.store, "j2", "p2")
    add_job(tracker.store, "j3", "p3")
    fake_comfy.get(
        f"{COMFY}/queue",
        json={
            "queue_running": [[5, "p2", GRAPH, {}, ["3"]]],
            "queue_pending": [[7, "p3", GRAPH, {}, ["3"]]],
        },
    )
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": ERROR})
    tracker.reconcile_once()
    assert tracker.store.get("j1").status == JobStatus.FAILED
    assert (
        tracker.store.get("j1").error == "SidecarSleepProgress (node 2) raised RuntimeError: boom"
    )
    assert tracker.store.get("j2").status == JobStatus.PROCESSING
    assert tracker.store.get("j3").status == JobStatus.QUEUED


def test_a_pass_does_not_act_on_a_job_that_ended_while_it_read_the_queue(tracker, fake_comfy):
    store = tracker.store
    add_job(store, "j1", "p1")
    add_job(store, "j2", "p2")

    def queue_read_while_j1_ends(request):
        # The socket's thread settles j1 while /queue is on its way.
        store.finish("j1", JobStatus.COMPLETED, [{"filename": "a.png", "type": "output"}])
        return 200, {}, json.dumps({"queue_running": [], "queue_pending": [[7, "p2", {}, {}, []]]})

    fake_comfy.add_callback("GET", f"{COMFY}/queue", callback=queue_read_while_j1_ends)
    reads = []
    get_many = store.get_many
    store.get_many = lambda ids, graph=True: reads.append(sorted(ids)) or get_many(ids, graph)
    # j1 left the queue, but is not looked up (the fake has no /history) nor counted missing.
    tracker.reconciler.reconcile_once()
    assert store.get("j1").status == JobStatus.COMPLETED
    assert tracker.reconciler._missing_since == {}
    assert reads == [["j1"]]  # only the job it might have acted on was read again
    assert store.get("j2").queue_position == 1


def test_while_events_flow_a_job_that_left_the_queue_is_looked_up_a_pass_later(tracker, fake_comfy):
    add_job(tracker.store)
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": [], "queue_pending": []})
    # Its events are on their way: this pass asks ComfyUI nothing more (the fake answers no
    # /history yet).
    tracker.reconciler.reconcile_once(events_flowing=True)
    assert tracker.store.get("j1").status == JobStatus.QUEUED
    # Still unsettled a pass later: /history says how it ended.
    fake_comfy.get(f"{COMFY}/history/p1", json={"p1": SUCCESS})
    tracker.reconciler.reconcile_once(events_flowing=True)
    assert tracker.store.get("j1").status == JobStatus.COMPLETED


def test_a_pass_asks_comfyui_nothing_while_the_socket_follows_the_only_running_job(
    tracker, fake_comfy
):
    add_job(tracker.store)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    # The socket follows p1 from its start: nothing to ask (the fake answers no /queue).
    tracker.reconciler.reconcile_once(events_flowing=True, followed="p1")
    assert tracker.store.get("j1").status == JobStatus.PROCESSING
    # A second job waits in ComfyUI's queue: its place is only in /queue.
    add_job(tracker.store, "j2", "p2")
    fake_comfy.get(
        f"{COMFY}/queue",
        json={
            "queue_running": [[1, "p1", GRAPH, {}, []]],
            "queue_pending": [[2, "p2", GRAPH, {}, []]],
        },
    )
    tracker.reconciler.reconcile_once(events_flowing=True, followed="p1")
    assert tracker.store.get("j2").queue_position == 1


def test_a_pass_asked_for_by_a_status_event_reads_the_queue_only_when_a_place_can_move(
    tracker, fake_comfy, monkeypatch
):
    reconciler, store = tracker.reconciler, tracker.store
    reconciler.reconcile_once(events_flowing=True)  # no job: nothing to ask, all accounted for
    add_job(store, "j1", "p1", submitted=False)  # its POST /prompt still on its way
    add_job(store, "j2", "p2")
    # ComfyUI says it holds one prompt: no place can move (the fake answers no /queue).
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert [store.get(j).queue_position for j in ("j1", "j2")] == [None, None]
    assert store.mark_submitted("j1", "p1", planned="p1")  # its answer came
    # Two prompts: one waits behind the other.
    running, waiting = [[1, "p1", GRAPH, {}, []]], [[2, "p2", GRAPH, {}, []]]
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": running, "queue_pending": waiting})
    reconciler.reconcile_once(events_flowing=True, queue_remaining=2)
    assert store.get("j2").queue_position == 1
    # A job shows a place above 0: it is corrected from /queue, whatever the event says.
    store.finish("j1", JobStatus.COMPLETED, [])
    fake_comfy.replace(
        responses.GET, f"{COMFY}/queue", json={"queue_running": waiting, "queue_pending": []}
    )
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert store.get("j2").queue_position == 0
    calls = len(fake_comfy.calls)
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert len(fake_comfy.calls) == calls
    # Read on a pass of the interval (no event asked for it), and when the last look at
    # /queue is RECONCILE_INTERVAL old.
    reconciler.reconcile_once(events_flowing=True)
    monkeypatch.setattr(reconciler, "_looked_at", reconciler._looked_at - 4)
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert len(fake_comfy.calls) == calls + 2


def test_a_pass_asked_for_by_a_status_event_reads_no_rows_when_the_last_left_nothing_to_do(
    tracker, fake_comfy, monkeypatch
):
    reconciler, store = tracker.reconciler, tracker.store
    reads = count_writes(store, monkeypatch, names=("unfinished_states",))
    reconciler.reconcile_once(events_flowing=True, queue_remaining=0)  # the first pass reads
    assert len(reads) == 1
    add_job(store)  # submitted since: ComfyUI's event says it holds one prompt
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert len(reads) == 1  # nothing read, nothing asked (the fake answers no /queue)
    # ComfyUI holds none (a run's end): the rows are read (a look without /queue).
    reconciler.reconcile_once(events_flowing=True, queue_remaining=0)
    assert len(reads) == 2
    # Two prompts: rows and /queue are read; the second waits, so a place is above 0.
    add_job(store, "j2", "p2")
    running, waiting = [[1, "p1", GRAPH, {}, []]], [[2, "p2", GRAPH, {}, []]]
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": running, "queue_pending": waiting})
    reconciler.reconcile_once(events_flowing=True, queue_remaining=2)
    assert len(reads) == 3 and store.get("j2").queue_position == 1
    # A place above 0 must be corrected: read even when the event says one prompt.
    store.finish("j1", JobStatus.COMPLETED, [])
    fake_comfy.replace(
        responses.GET, f"{COMFY}/queue", json={"queue_running": waiting, "queue_pending": []}
    )
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert len(reads) == 4 and store.get("j2").queue_position == 0
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    assert len(reads) == 4
    # Read again when a deadline has come, when the last look is two intervals old, on an
    # interval's pass, and when the socket is not known to flow.
    monkeypatch.setattr(reconciler, "_first_deadline", time.time() - 1)
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    monkeypatch.setattr(reconciler, "_first_deadline", None)
    monkeypatch.setattr(reconciler, "_looked_at", reconciler._looked_at - 4)
    reconciler.reconcile_once(events_flowing=True, queue_remaining=1)
    reconciler.reconcile_once(events_flowing=True)
    reconciler.reconcile_once(queue_remaining=1)
    assert len(reads) == 8


def test_places_are_ranked_by_queue_number_without_queue_when_comfyui_holds_only_these_jobs(
    tracker, fake_comfy, monkeypatch
):
    reconciler, store = tracker.reconciler, tracker.store
    # ComfyUI's numbers: j1 runs (1); j2 (3) and j3 (2) wait; j4 was sent to the front (-4).
    for job_id, number in (("j1", 1), ("j2", 3), ("j3", 2), ("j4", -4)):
        add_job(store, job_id, "p" + job_id[1:], submitted=False)
        store.mark_submitted(job_id, "p" + job_id[1:], number=number)
    store.mark_processing("p1")
    queue = {
        "queue_running": [[1, "p1", GRAPH, {}, []]],
        "queue_pending": [[n, p, GRAPH, {}, []] for n, p in ((3, "p2"), (2, "p3"), (-4, "p4"))],
    }
    fake_comfy.get(f"{COMFY}/queue", json=queue)
    reconciler.reconcile_once(events_flowing=True)  # a look at /queue: every job in it
    places = {"j1": 0, "j4": 1, "j3": 2, "j2": 3}
    assert {j: store.get(j).queue_position for j in places} == places
    calls = len(fake_comfy.calls)
    # j1's run ends: ComfyUI's `status` event (three prompts) comes before the run's last
    # event, so a pass finds j1 unfinished still; the run the socket follows is left out.
    reconciler.reconcile_once(events_flowing=True, queue_remaining=3, holds=3, followed="p1")
    assert len(fake_comfy.calls) == calls
    assert {j: store.get(j).queue_position for j in places} == places
    # Not the run followed: the counts differ, and /queue is read.
    reconciler.reconcile_once(events_flowing=True, queue_remaining=3, holds=3, followed="p9")
    assert len(fake_comfy.calls) == calls + 1
    calls = len(fake_comfy.calls)
    # j1 ends; ComfyUI says it holds three prompts, as many as there are unfinished jobs.
    store.finish("j1", JobStatus.COMPLETED, [])
    store.mark_processing("p4")
    reconciler.reconcile_once(events_flowing=True, queue_remaining=3, holds=3)
    assert {j: store.get(j).queue_position for j in ("j4", "j3", "j2")} == {
        "j4": 0,
        "j3": 1,
        "j2": 2,
    }
    # An interval's pass alike; it writes nothing, as no place moved.
    writes = count_writes(store, monkeypatch, names=("set_queue_positions",))
    reconciler.reconcile_once(events_flowing=True, holds=3)
    assert len(fake_comfy.calls) == calls and writes == []
    # Anything that does not add up is read from /queue: another client's prompt (a count
    # above the jobs'), a job without its number (confirmed by a pass that adopted it), a
    # lost one, two running, and a last look RANKED_LOOK_EVERY intervals old.
    reconciler.reconcile_once(events_flowing=True, holds=4)
    assert len(fake_comfy.calls) == calls + 1
    add_job(store, "j5", "p5", submitted=True)
    reconciler.reconcile_once(events_flowing=True, holds=4)
    assert len(fake_comfy.calls) == calls + 2
    store.finish("j5", JobStatus.COMPLETED, [])
    monkeypatch.setattr(reconciler, "_missing_since", {"p9": 0.0})
    reconciler.reconcile_once(events_flowing=True, holds=3)
    assert len(fake_comfy.calls) == calls + 3
    monkeypatch.setattr(reconciler, "_missing_since", {})
    store.mark_processing("p3")
    reconciler.reconcile_once(events_flowing=True, holds=3)
    assert len(fake_comfy.calls) == calls + 4
    monkeypatch.setattr(reconciler, "_looked_at", reconciler._looked_at - 29)
    store.finish("j3", JobStatus.COMPLETED, [])
    reconciler.reconcile_once(events_flowing=True, holds=2)
    assert len(fake_comfy.calls) == calls + 4  # 29 s: ranked still
    monkeypatch.setattr(reconciler, "_looked_at", reconciler._looked_at - 1)
    reconciler.reconcile_once(events_flowing=True, holds=2)
    assert len(fake_comfy.calls) == calls + 5


def test_the_heartbeat_is_written_when_it_changes_or_an_interval_after_the_last(
    tracker, monkeypatch
):
    tracker.leader = True
    writes = count_writes(tracker.store, monkeypatch, names=("put_meta",))
    clock = [1000.0]
    monkeypatch.setattr("api.tracker.time.monotonic", lambda: clock[0])
    tracker._heartbeat()
    tracker._heartbeat()
    assert len(writes) == 1
    tracker._ws_connected = True
    tracker._heartbeat()
    assert len(writes) == 2
    assert tracker.store.get_meta(tracker.config.tracker_key)[0]["websocket"] == "connected"
    clock[0] += tracker.config.reconcile_interval - 0.1
    tracker._heartbeat()
    assert len(writes) == 2
    clock[0] += 0.1
    tracker._heartbeat()
    assert len(writes) == 3


def test_a_runs_first_node_is_written_with_its_first_step(tracker, monkeypatch):
    store = tracker.store
    add_job(store)
    tracker.handle_event("execution_start", {"prompt_id": "p1"})
    writes = count_writes(store, monkeypatch)
    tracker.handle_event("executing", {"node": "4", "prompt_id": "p1"})
    assert store.get("j1").current_node is None  # held: the start was written just now
    tracker.handle_event("progress", {"value": 1, "max": 8, "prompt_id": "p1"})
    job = store.get("j1")
    assert (job.current_node, job.current_step) == ("4", 1)
    assert writes == ["record_progress"]


def test_a_lost_job_that_ended_after_the_pass_read_it_is_not_sent_again(tracker, fake_comfy):
    # The pass read j1 queued; it completed before the pass came to resubmit it (the fake
    # answers no POST /prompt: sending it would fail the test).
    stale = add_job(tracker.store)
    tracker.store.finish("j1", JobStatus.COMPLETED, [])
    tracker.reconciler._resubmit_or_fail(stale, "ComfyUI restarted")
    job = tracker.store.get("j1")
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)


def lose_everything(fake_comfy):
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": [], "queue_pending": []})
    fake_comfy.get(f"{COMFY}/history/p1", json={})


def test_a_running_job_comfyui_lost_fails_saying_it_restarted(tracker, fake_comfy, monkeypatch):
    add_job(tracker.store)
    tracker.store.mark_processing("p1")
    lose_everything(fake_comfy)
    clock = [1000.0]
    monkeypatch.setattr("api.tracker.time.time", lambda: clock[0])
    tracker.reconcile_once()
    assert tracker.store.get("j1").status == JobStatus.PROCESSING  # within the grace
    clock[0] += 6
    tracker.reconcile_once()
    job = tracker.store.get("j1")
    assert job.status == JobStatus.FAILED
    assert "ComfyUI restarted while the job was running" in job.error


def test_a_pending_job_comfyui_lost_is_resubmitted_from_its_graph(tracker, fake_comfy, monkeypatch):
    add_job(tracker.store)
    lose_everything(fake_comfy)
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p2", "number": 1, "node_errors": {}})
    clock = [1000.0]
    monkeypatch.setattr("api.tracker.time.time", lambda: clock[0])
    tracker.reconcile_once()
    clock[0] += 6
    tracker.reconcile_once()
    job = tracker.store.get("j1")
    assert (job.status, job.prompt_id, job.attempts) == (JobStatus.QUEUED, "p2", 2)
    sent = json.loads(next(c for c in fake_comfy.calls if c.request.method == "POST").request.body)
    assert sent["prompt"] == GRAPH and sent["extra_data"] == {"sidecar_job_id": "j1"}


def tracker_with(tmp_path, **env: str) -> Tracker:
    """A tracker that takes a job missing from ComfyUI for lost after 5 s, with `env`."""
    base = {"COMFYUI_HOST": "comfy.test", "WORKSPACE_PATH": str(tmp_path), "LOST_JOB_GRACE": "5"}
    return make_tracker(Config.from_env({**base, **env}))


def past_the_grace(tracker: Tracker, monkeypatch) -> None:
    """Two passes LOST_JOB_GRACE apart: a job missing at both is lost."""
    clock = [1000.0]
    monkeypatch.setattr("api.tracker.time.time", lambda: clock[0])
    tracker.reconcile_once()
    clock[0] += 6
    tracker.reconcile_once()


def test_a_resubmitted_job_saves_in_the_output_subfolder(tmp_path, fake_comfy, monkeypatch):
    tracker = tracker_with(tmp_path, OUTPUT_SUBFOLDER="%Y")
    saving = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "F"}}}
    jobs.add_job(tracker.store, "j1", "p1", submitted=True, client_id="client-1", graph=saving)
    lose_everything(fake_comfy)
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p2", "number": 1, "node_errors": {}})
    years = {time.strftime("%Y", time.gmtime())}
    past_the_grace(tracker, monkeypatch)
    years.add(time.strftime("%Y", time.gmtime()))
    sent = json.loads(next(c for c in fake_comfy.calls if c.request.method == "POST").request.body)
    assert sent["prompt"]["1"]["inputs"]["filename_prefix"] in {f"{y}/F" for y in years}
    # The stored graph stays as rendered: the folder is the one of each sending.
    assert tracker.store.get("j1").graph == saving


def test_with_resubmission_off_a_lost_pending_job_fails(tmp_path, fake_comfy, monkeypatch):
    tracker = tracker_with(tmp_path, RESUBMIT_LOST_JOBS="false")
    add_job(tracker.store)
    lose_everything(fake_comfy)
    past_the_grace(tracker, monkeypatch)
    job = tracker.store.get("j1")
    assert job.status == JobStatus.FAILED and "RESUBMIT_LOST_JOBS is off" in job.error


def test_an_unconfirmed_submission_is_found_by_its_marker(tracker, fake_comfy):
    add_job(tracker.store, submitted=False, prompt_id="ours")
    fake_comfy.get(
        f"{COMFY}/queue",
        json={
            "queue_running": [
                [3, "theirs", GRAPH, {"client_id": "client-1", "sidecar_job_id": "j1"}, ["3"]]
            ],
            "queue_pending": [],
        },
    )
    tracker.reconcile_once()
    job = tracker.store.get("j1")
    assert job.prompt_id == "theirs" and job.submitted_at is not None
    assert job.status == JobStatus.PROCESSING
    # With ComfyUI's number, as its own confirmation would have stored it: places are then
    # ranked without /queue (a job without one had every pass read it while it waited).
    assert job.queue_number == 3


def test_an_unconfirmed_submission_that_left_the_queue_is_found_in_the_history(tracker, fake_comfy):
    add_job(tracker.store, submitted=False, prompt_id="ours")
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": [], "queue_pending": []})
    item = [7, "theirs", GRAPH, {"client_id": "client-1", "sidecar_job_id": "j1"}, ["3"]]
    entry = {"theirs": {"prompt": item, "outputs": {}, "status": {"status_str": "success"}}}
    fake_comfy.get(f"{COMFY}/history", json=entry)
    fake_comfy.get(f"{COMFY}/history/theirs", json=entry)  # then settled from it
    tracker.reconcile_once()
    job = tracker.store.get("j1")
    assert job.prompt_id == "theirs" and job.queue_number == 7


def test_a_job_past_its_deadline_is_stopped_and_fails(tracker, fake_comfy, monkeypatch):
    add_job(tracker.store)
    fake_comfy.get(
        f"{COMFY}/queue", json={"queue_running": [], "queue_pending": [[1, "p1", GRAPH, {}, ["3"]]]}
    )
    fake_comfy.post(f"{COMFY}/queue", body="")
    job = tracker.store.get("j1")
    monkeypatch.setattr("api.tracker.time.time", lambda: job.created_at + 4000)
    tracker.store._exec("UPDATE jobs SET deadline = ? WHERE id = 'j1'", (job.created_at + 90,))
    tracker.reconcile_once()
    job = tracker.store.get("j1")
    assert job.status == JobStatus.FAILED and job.error == "Job timed out after 1.5 minutes"
    deleted = [
        json.loads(c.request.body)
        for c in fake_comfy.calls
        if c.request.method == "POST" and c.request.url.endswith("/queue")
    ]
    assert deleted == [{"delete": ["p1"]}]


def test_purge_removes_old_finished_jobs_only(tracker, monkeypatch):
    add_job(tracker.store, "old", "p-old")
    add_job(tracker.store, "new", "p-new")
    add_job(tracker.store, "open", "p-open")
    tracker.store.finish("old", JobStatus.COMPLETED)
    tracker.store.finish("new", JobStatus.COMPLETED)
    tracker.store._exec("UPDATE jobs SET finished_at = 1 WHERE id = 'old'")
    assert tracker.reconciler.purge_old_jobs() == 1
    assert tracker.store.get("old") is None
    assert tracker.store.get("new") and tracker.store.get("open")


def test_comfyui_down_during_reconcile_changes_nothing(tracker, fake_comfy):
    import requests

    add_job(tracker.store)
    fake_comfy.get(f"{COMFY}/queue", body=requests.ConnectionError("down"))
    with pytest.raises(ComfyUIUnreachable):
        tracker.reconcile_once()
    assert tracker.store.get("j1").status == JobStatus.QUEUED


def test_outcome_of_an_interrupted_prompt_is_cancelled():
    entry = {
        "outputs": {},
        "status": {
            "status_str": "error",
            "completed": False,
            "messages": [["execution_interrupted", {"prompt_id": "p", "node_id": "2"}]],
        },
    }
    assert outcome_of(entry)[0] == JobStatus.CANCELLED
    assert outcome_of(SUCCESS)[0] == JobStatus.COMPLETED
    # History entries from servers that predate the status field.
    assert outcome_of({"outputs": SUCCESS["outputs"]})[0] == JobStatus.COMPLETED


def test_collect_outputs_keeps_every_image_with_its_node():
    images = collect_outputs(SUCCESS["outputs"])
    assert images[2] == {
        "filename": "b_00001_.png",
        "subfolder": "sub",
        "type": "output",
        "node_id": "7",
    }
    assert collect_outputs({"5": {"text": ["hello"]}}) == []


def test_only_one_tracker_takes_the_lock(tmp_path):
    config = Config.from_env({"WORKSPACE_PATH": str(tmp_path)})
    first, second = make_tracker(config, "c"), make_tracker(config, "c")
    try:
        assert first._try_lock() is True
        assert second._try_lock() is False
    finally:
        first.stop()
    assert second._try_lock() is True
    second.stop()


def test_a_waiting_candidate_takes_over_when_the_elected_tracker_stops(tmp_path):
    config = Config.from_env(
        {"COMFYUI_HOST": "127.0.0.1", "COMFYUI_PORT": "9", "WORKSPACE_PATH": str(tmp_path)}
    )
    first, second = make_tracker(config, "c"), make_tracker(config, "c")
    elected = threading.Event()
    second._ws_loop = elected.set  # what the elected tracker starts first, observed
    second._reconcile_loop = lambda: None
    try:
        assert first._try_lock() is True
        second.start()  # waits in flock (no retry loop)
        assert not elected.wait(0.2)
        first.stop()
        # The kernel hands the lock over as the holder lets it go: well within the
        # ELECTION_RETRY a retrying candidate would take.
        assert elected.wait(tracker_module.ELECTION_RETRY / 2)
        assert second.leader
    finally:
        first.stop()
        second.stop()


def test_a_candidate_stopped_while_it_waits_gives_the_lock_back(tmp_path):
    config = Config.from_env({"WORKSPACE_PATH": str(tmp_path)})
    first, second, third = (make_tracker(config, "c") for _ in range(3))
    assert first._try_lock() is True
    waiting = threading.Thread(target=second._try_lock, kwargs={"wait": True})
    waiting.start()
    second.stop()
    first.stop()
    waiting.join(5)
    assert not waiting.is_alive() and not second.leader
    assert third._try_lock() is True  # the stopped candidate did not keep it
    third.stop()


def test_purge_files_deletes_images_and_says_which_it_could_not(tmp_path, caplog):
    config = Config.from_env(
        {"COMFYUI_HOST": "comfy.test", "WORKSPACE_PATH": str(tmp_path), "PURGE_FILES": "true"}
    )
    tracker = make_tracker(config)
    output = config.comfyui_output_dir
    (output / "locked").mkdir(parents=True)
    (output / "gone.png").write_bytes(b"x")
    (output / "locked" / "kept.png").write_bytes(b"x")
    add_job(tracker.store, "old", "p-old")
    images = [
        {"filename": "gone.png", "subfolder": "", "type": "output"},
        {"filename": "kept.png", "subfolder": "locked", "type": "output"},
        {"filename": "never-there.png", "subfolder": "", "type": "output"},
    ]
    tracker.store.finish("old", JobStatus.COMPLETED, images)
    tracker.store._exec("UPDATE jobs SET finished_at = 1 WHERE id = 'old'")
    real_unlink = Path.unlink

    def unlink(path, *args, **kwargs):
        if path.parent.name == "locked":  # as for a folder the sidecar's user may not write
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    with mock.patch.object(Path, "unlink", unlink):
        assert tracker.reconciler.purge_old_jobs() == 1
    assert not (output / "gone.png").exists() and (output / "locked" / "kept.png").exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "locked/kept.png" in warning and "Permission denied" in warning


def test_a_pass_does_not_take_a_job_that_ended_while_it_looked_for_lost(
    tracker, fake_comfy, monkeypatch, caplog
):
    # Under load the tracker's events settle a job after the pass read it (missing from
    # /queue since long ago: it had run) and before the pass asked /history: the job is
    # settled, not lost (no "restarted" warning, no failure, nothing sent again; the fake
    # answers no POST /prompt).
    store = tracker.store
    add_job(store)
    add_job(store, "j2", "p2")
    store.mark_processing("p2")
    fake_comfy.get(f"{COMFY}/queue", json={"queue_running": [], "queue_pending": []})
    for prompt_id in ("p1", "p2"):
        tracker.reconciler._missing_since[prompt_id] = store.now() - 60
    read = store.get_many

    def read_then_settle(ids, graph=True):
        jobs = read(ids, graph=graph)
        for job_id in ids:
            store.finish(job_id, JobStatus.COMPLETED, [])
        return jobs

    monkeypatch.setattr(store, "get_many", read_then_settle)
    tracker.reconcile_once()
    assert [store.get(j).status for j in ("j1", "j2")] == [JobStatus.COMPLETED] * 2
    assert "restarted" not in caplog.text
    assert tracker.reconciler._missing_since == {}


class Waits:
    """An Event whose waits are recorded and return at once (`woken` says what they return);
    the tracker is stopped after `passes` waits."""

    def __init__(self, tracker: Tracker, woken: bool = False, passes: int = 0) -> None:
        self.tracker, self.woken, self.passes, self.waits = tracker, woken, passes, []

    def wait(self, timeout: float) -> bool:
        self.waits.append(round(timeout, 3))
        if self.passes and len(self.waits) >= self.passes:
            self.tracker._stop.set()
        return self.woken

    def clear(self) -> None:
        pass

    def set(self) -> None:
        pass

    def is_set(self) -> bool:
        return False


def test_a_timed_pass_costs_one_wait(tracker, monkeypatch):
    # Each wait wakes the thread, and on an idle host a wake-up costs CPU of its own. Not longer
    # while nothing is unfinished: a silently dead socket brings no `status` event for the next
    # submission (test_a_silently_dead_websocket_does_not_delay_completion).
    reconciler = tracker.reconciler
    monkeypatch.setattr(reconciler, "purge_old_jobs", lambda: None)
    monkeypatch.setattr(reconciler, "reconcile_once", lambda **_: None)
    tracker._reconcile_now = Waits(tracker, passes=2)
    stop = tracker._stop
    sleeps = []
    monkeypatch.setattr(stop, "wait", lambda timeout=None: sleeps.append(timeout))
    tracker._reconcile_loop()
    gap, interval = tracker_module.MIN_RECONCILE_GAP, tracker.config.reconcile_interval
    assert tracker._reconcile_now.waits == [interval + gap, interval + gap]
    assert sleeps == []  # no second wait after a timed pass


def test_a_pass_asked_for_comes_a_refresh_gap_after_the_last_one_began(tracker, monkeypatch):
    reconciler = tracker.reconciler
    monkeypatch.setattr(reconciler, "purge_old_jobs", lambda: None)
    monkeypatch.setattr(reconciler, "reconcile_once", lambda **_: None)
    tracker._reconcile_now = Waits(tracker, woken=True, passes=1)
    sleeps = []
    monkeypatch.setattr(tracker._stop, "wait", lambda timeout=None: sleeps.append(timeout))
    tracker._reconcile_loop()
    assert len(sleeps) == 1
    assert tracker_module.QUEUE_REFRESH_GAP - 0.5 < sleeps[0] <= tracker_module.QUEUE_REFRESH_GAP


@pytest.mark.parametrize(
    ("prompts", "gap"),
    [
        (None, tracker_module.QUEUE_REFRESH_GAP),
        (10, tracker_module.QUEUE_REFRESH_GAP),
        (75, 75 * tracker_module.QUEUE_REFRESH_PER_PROMPT),
        (400, None),  # RECONCILE_INTERVAL
    ],
)
def test_a_deep_queue_is_placed_less_often(tracker, monkeypatch, prompts, gap):
    # Each pass reads and places every unfinished job, and two `status` events come with each
    # run: with many prompts waiting, the gap grows with them, up to RECONCILE_INTERVAL.
    gap = tracker.config.reconcile_interval if gap is None else gap
    reconciler = tracker.reconciler
    monkeypatch.setattr(reconciler, "purge_old_jobs", lambda: None)
    monkeypatch.setattr(reconciler, "reconcile_once", lambda **_: None)
    tracker._queue_remaining = prompts
    tracker._reconcile_now = Waits(tracker, woken=True, passes=1)
    sleeps = []
    monkeypatch.setattr(tracker._stop, "wait", lambda timeout=None: sleeps.append(timeout))
    tracker._reconcile_loop()
    assert len(sleeps) == 1
    assert gap - 0.5 < sleeps[0] <= gap


def test_an_idle_tracker_says_comfyui_is_unreachable_when_nothing_answers(tmp_path):
    """A pass with no job to ask about asks ComfyUI nothing: it must not count as an answer.
    (The health's tracker.comfyui_reachable, and the sidecar_comfyui_reachable gauge, said 1
    on an idle host whose ComfyUI was down.)"""
    port = free_port()  # nothing listens there
    config = Config.from_env(
        {"COMFYUI_HOST": "127.0.0.1", "COMFYUI_PORT": str(port), "WORKSPACE_PATH": str(tmp_path)}
    )
    tracker = make_tracker(config)
    tracker.start()
    try:

        def said():
            state = tracker.store.get_meta(config.tracker_key)
            return state is not None and state[0]["comfyui_reachable"] is False

        wait_for(said, timeout=15, message="the heartbeat to say ComfyUI is unreachable")
        assert tracker.leader and tracker.client.answered_at == 0.0
    finally:
        tracker.stop()


class ClosingSocket:
    """A WebSocket to ComfyUI whose next frame is the close that follows `close()` (as the
    server answers ours) or that the server sends of its own (`close_from_server`)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def settimeout(self, seconds) -> None:
        pass

    def recv_data_frame(self, control):
        if not self.closed.wait(5):
            raise AssertionError("never closed")
        return websocket.ABNF.OPCODE_CLOSE, SimpleNamespace(data=b"")

    def close(self, timeout=None) -> None:
        self.closed.set()

    close_from_server = close


@pytest.mark.parametrize("closed_by", ["the tracker's stop", "ComfyUI"])
def test_a_socket_closed_by_the_tracker_s_stop_is_not_a_lost_connection(
    tracker, monkeypatch, caplog, closed_by
):
    ws = ClosingSocket()
    connected = threading.Event()

    def connect(url, **options):
        if connected.is_set():  # ComfyUI's close: the loop connects again, to nothing
            tracker._stop.wait(5)
            raise ConnectionRefusedError
        connected.set()
        return ws

    monkeypatch.setattr(tracker_module.websocket, "create_connection", connect)
    loop = threading.Thread(target=tracker._ws_loop)
    with caplog.at_level("DEBUG", logger="api.tracker"):
        loop.start()
        assert connected.wait(5)
        wait_for(lambda: tracker._ws is ws, 5, message="the loop to read")
        if closed_by == "ComfyUI":
            ws.close_from_server()
            wait_for(lambda: tracker._ws is None, 5, message="the loop to notice")
        tracker.stop()
        loop.join(5)
    lost = [r for r in caplog.records if "websocket to ComfyUI lost" in r.getMessage()]
    assert [r.levelname for r in lost] == (["WARNING"] if closed_by == "ComfyUI" else [])


def test_a_job_database_that_does_not_answer_is_no_traceback_every_pass(
    tracker, monkeypatch, caplog
):
    # A cluster's PostgreSQL down: its fleet says so once an outage (api/fleet.py); the
    # tracker's passes and heartbeats, every few seconds, add nothing to it.
    down = StoreUnavailable("the job database is not answering (connection refused)")

    def unavailable(*args, **kwargs):
        raise down

    tracker.leader = True
    monkeypatch.setattr(tracker.reconciler, "purge_old_jobs", lambda: None)
    monkeypatch.setattr(tracker.reconciler, "reconcile_once", unavailable)
    monkeypatch.setattr(tracker.store, "put_meta", unavailable)
    tracker._reconcile_now = Waits(tracker, passes=3)
    with caplog.at_level("DEBUG", logger="api.tracker"):
        tracker._reconcile_loop()
    assert len(tracker._reconcile_now.waits) == 3  # it kept passing
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []

    # Any other failure still comes with its traceback.
    monkeypatch.setattr(tracker.store, "put_meta", lambda *a: 1 / 0)
    tracker._beat = (None, 0.0)
    with caplog.at_level("ERROR", logger="api.tracker"):
        tracker._heartbeat()
    assert caplog.records[-1].getMessage() == "could not record the tracker heartbeat"
    assert caplog.records[-1].exc_info is not None
