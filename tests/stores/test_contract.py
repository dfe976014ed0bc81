"""What every job store promises (api/jobstore.py), checked on SQLite and on PostgreSQL."""

import dataclasses
import threading
import time

import pytest

from api import batches
from api.batch import Batch
from api.exceptions import DuplicateIdempotencyKey
from api.job import JobStatus, image_path
from tests.support.jobs import add_job
from tests.support.sidecar import wait_for


def make(store, job_id: str = "j1", prompt_id: str = "p1", **fields):
    return add_job(
        store, job_id, prompt_id, prompt="prompt", params={"seed": 2**64 - 1}, graph={"1": {}},
        **fields,
    )  # fmt: skip


def test_a_job_reads_back_as_written(store):
    graph = {"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}, "1": {}}
    job = add_job(
        store,
        "j1",
        "p1",
        prompt="a fox",
        params={"seed": 2**64 - 1, "cfg": 3.5},
        graph=graph,
        notes={"sampler": "not used"},
        options={"save_to_disk": True},
        total_steps=8,
        idempotency_key="k1",
        request_hash="h",
    )
    assert (job.status, job.progress, job.current_step, job.total_steps) == ("queued", 0, None, 8)
    assert job.params == {"seed": 2**64 - 1, "cfg": 3.5}  # 64-bit seeds exactly
    assert list(job.graph) == ["9", "1"]  # the graph as sent, node order included
    assert job.notes == {"sampler": "not used"} and job.options == {"save_to_disk": True}
    assert store.find_by_prompt("p1").id == "j1"
    assert store.find_by_idempotency_key("k1").id == "j1"
    assert store.get("nope") is None and store.find_by_prompt("nope") is None


def test_reads_without_the_graph_leave_it_out_and_nothing_else(store):
    make(store, options={"save_to_disk": True}, total_steps=8)
    whole = store.get("j1")
    assert whole.graph == {"1": {}}
    for job in (*store.unfinished(graph=False), *store.get_many(["j1"], graph=False)):
        assert job.graph == {}
        assert job.to_status(image_path) == whole.to_status(image_path)
        assert (job.params, job.options, job.total_steps) == (whole.params, whole.options, 8)
    assert [j.graph for j in store.unfinished()] == [{"1": {}}]
    assert [j.graph for j in store.get_many(["j1"])] == [{"1": {}}]


def test_unfinished_states_say_where_each_job_stands_and_nothing_more(store):
    make(store, "j1", "p1", options={"save_to_disk": True}, deadline=time.time() + 60)
    store.mark_submitted("j1", "p1", planned="p1", number=4)
    store.set_queue_positions({"p1": 2})
    make(store, "j2", None, total_steps=8)
    make(store, "done", "p3", submitted=True)
    store.finish("done", JobStatus.COMPLETED, [])
    whole = store.unfinished()
    states = store.unfinished_states()
    assert [j.id for j in states] == [j.id for j in whole] == ["j1", "j2"]
    fields = ("prompt_id", "status", "queue_position", "queue_number", "deadline", "submitted_at")
    fields += ("created_at", "updated_at", "attempts", "total_steps")
    for state, job in zip(states, whole, strict=True):
        for field in fields:
            assert getattr(state, field) == getattr(job, field), field
        assert (state.graph, state.params, state.options, state.outputs) == ({}, {}, {}, [])
    assert (states[0].queue_position, states[0].queue_number) == (2, 4)
    assert states[0].submitted and not states[1].submitted


def test_an_idempotency_key_is_taken_once(store):
    make(store, "j1", "p1", idempotency_key="k")
    with pytest.raises(DuplicateIdempotencyKey):
        make(store, "j2", "p2", idempotency_key="k")
    assert store.count() == 1


def test_finish_is_idempotent_and_final(store):
    make(store)
    done = store.finish("j1", JobStatus.COMPLETED, [{"filename": "a.png"}])
    assert store.finish("j1", JobStatus.FAILED, error="late") is None
    job = store.get("j1")
    assert job.status == "completed" and job.error is None and job.progress == 1.0
    # What finish returns is the row it wrote (all but the graph, which it does not read).
    assert done == dataclasses.replace(job, graph={}) and job.graph
    assert store.record_progress("p1", 1, 2, None) is False
    assert store.mark_processing("p1") is False
    with pytest.raises(ValueError):
        store.finish("j1", JobStatus.QUEUED)


def test_finish_names_the_run_it_ends(store):
    make(store)
    assert store.finish("j1", JobStatus.FAILED, error="x", prompt_id="another-run") is None
    assert store.finish("j1", JobStatus.FAILED, error="x", prompt_id="p1").status == "failed"


def test_a_final_job_is_never_marked_resubmitted(store):
    make(store, "j1", "p1", submitted=True)
    store.finish("j1", JobStatus.COMPLETED, [])
    store.mark_resubmitted("j1", "p2")
    job = store.get("j1")
    assert (job.status, job.prompt_id, job.attempts) == ("completed", "p1", 1)


def test_finish_records_the_runs_last_node_when_given(store):
    make(store, "j1", "p1", submitted=True)
    make(store, "j2", "p2", submitted=True)
    for prompt_id in ("p1", "p2"):
        store.mark_processing(prompt_id, "3")
    assert store.finish("j1", JobStatus.COMPLETED, [], node="9").current_node == "9"
    assert store.finish("j2", JobStatus.COMPLETED, []).current_node == "3"
    assert [store.get(j).current_node for j in ("j1", "j2")] == ["9", "3"]


def test_finish_records_a_start_given_only_where_none_was(store):
    make(store, "j1", "p1", submitted=True)  # its start never written
    make(store, "j2", "p2", submitted=True)
    make(store, "j3", "p3", submitted=True)  # a run said to start before the job was made
    make(store, "j4", "p4", submitted=True)
    store.mark_processing("p2")
    started = store.get("j2").started_at
    time.sleep(0.4)  # j1 older than its run (a store may set created_at on its own clock)
    one = store.finish("j1", JobStatus.COMPLETED, [], ran_for=0.25)
    assert one.started_at == pytest.approx(one.finished_at - 0.25, abs=0.05)
    assert store.finish("j2", JobStatus.COMPLETED, [], ran_for=30).started_at == started
    three = store.finish("j3", JobStatus.FAILED, error="x", ran_for=3600)
    assert three.started_at == three.created_at
    assert store.finish("j4", JobStatus.COMPLETED, []).started_at is None  # no start known
    assert [store.get(j).started_at for j in ("j1", "j2", "j3")] == [
        one.started_at, started, three.started_at,
    ]  # fmt: skip


def test_progress_moves_forward_only(store):
    make(store, submitted=True)
    assert store.mark_processing("p1", "3") is True
    assert store.record_progress("p1", 3, 8, "13") is True
    assert store.record_progress("p1", 1, 8, "13") is True  # a later node restarts its count
    job = store.get("j1")
    assert (job.status, job.progress, job.current_step, job.current_node) == (
        "processing", 0.375, 1, "13",
    )  # fmt: skip
    assert job.started_at is not None


def test_a_submission_confirmed_for_a_run_that_was_replaced_changes_nothing(store):
    make(store)
    assert store.mark_submitted("j1", "comfy-1", planned="p-other") is False
    assert store.get("j1").submitted_at is None
    assert store.mark_submitted("j1", "comfy-1", planned="p1") is True
    assert store.get("j1").prompt_id == "comfy-1"


def test_queue_positions_change_only_rows_that_moved(store):
    make(store, "j1", "p1", submitted=True)
    make(store, "j2", "p2", submitted=True)
    store.set_queue_positions({"p1": 0, "p2": 1})
    before = store.get("j2").updated_at
    store.set_queue_positions({"p1": 0, "p2": 1})
    assert store.get("j2").updated_at == before
    assert (store.get("j1").queue_position, store.get("j2").queue_position) == (0, 1)
    # Gone from the queue (None), moved, unknown, and final: each as it should be.
    make(store, "j3", "p3", submitted=True)
    store.finish("j3", JobStatus.COMPLETED, [])
    store.set_queue_positions({"p1": None, "p2": 0, "p9": 4, "p3": 2})
    assert [store.get(j).queue_position for j in ("j1", "j2", "j3")] == [None, 0, None]


def test_listing_counting_and_purging(store):
    for i in range(5):
        make(store, f"j{i}", f"p{i}")
    store.finish("j1", JobStatus.COMPLETED)
    store.finish("j3", JobStatus.CANCELLED)
    assert [j.id for j in store.unfinished()] == ["j0", "j2", "j4"]
    assert store.count(["queued"]) == 3 and store.count() == 5
    assert store.counts() == {
        "queued": 3, "processing": 0, "completed": 1, "failed": 0, "cancelled": 1,
    }  # fmt: skip
    assert store.counts(["queued", "processing"]) == {"queued": 3, "processing": 0}
    page, total = store.page(["completed", "cancelled"], limit=1, offset=0)
    assert total == 2 and [j.id for j in page] == ["j3"]
    page, total = store.page(None, limit=2, offset=1)
    assert total == 5 and [j.id for j in page] == ["j3", "j2"]
    assert [j.id for j in store.purge(store.now() + 1)] in (["j1", "j3"], ["j3", "j1"])
    assert store.count() == 3


def test_an_option_is_recorded_and_the_job_changes(store):
    make(store)
    before = store.get("j1").updated_at
    store.record_option("j1", "saved_as", "x.png")
    job = store.get("j1")
    assert job.options == {"saved_as": "x.png"} and job.updated_at > before


def test_a_discarded_job_is_gone(store):
    make(store)
    store.discard("j1")
    assert store.get("j1") is None and store.version("j1") is None


def test_resubmission_counts_attempts(store):
    make(store, submitted=True)
    store.mark_resubmitted("j1", "p2")
    job = store.get("j1")
    assert (job.prompt_id, job.attempts, job.status) == ("p2", 2, "queued")


def test_a_job_that_starts_is_at_place_0(store):
    make(store, "j1", "p1", submitted=True)
    store.set_queue_positions({"p1": 2})
    assert store.mark_processing("p1") is True
    assert store.get("j1").queue_position == 0


def test_a_prompts_queue_number_is_kept_with_it_and_replaced_with_it(store):
    make(store)
    assert store.mark_submitted("j1", "p1", planned="p1", number=7) is True
    assert store.get("j1").queue_number == 7
    store.mark_resubmitted("j1", "p2", -3.0)
    listed = store.unfinished(graph=False)
    assert [(j.prompt_id, j.queue_number) for j in listed] == [("p2", -3.0)]
    store.mark_resubmitted("j1", "p3")  # a server that gave no number: none is kept
    assert store.get_many(["j1"], graph=False)[0].queue_number is None


def test_meta_values_are_shared_and_chosen_once(store):
    assert store.setdefault_meta("client_id", "a") == "a"
    assert store.setdefault_meta("client_id", "b") == "a"
    store.put_meta("tracker", {"pid": 1})
    value, at = store.get_meta("tracker")
    assert value == {"pid": 1} and abs(at - store.now()) < 60
    assert store.get_meta("nope") is None


def test_a_waiter_wakes_when_the_job_changes_not_later(store):
    make(store, submitted=True)
    version = store.version("j1")[0]
    woke = threading.Event()

    def wait():
        if store.wait_for_change("j1", version, 30):
            woke.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert not woke.wait(0.3)  # nothing changed yet
    started = time.monotonic()
    store.record_progress("p1", 1, 4, None)
    assert woke.wait(5)
    assert time.monotonic() - started < 1.0
    waiter.join()
    assert store.wait_for_change("j1", store.version("j1")[0], 0.05) is False  # timeout
    assert store.wait_for_change("gone", None, 5) is True  # no such job: at once


def test_stopped_waits_end_at_once_and_so_does_every_later_one(store):
    # The worker is stopping (SIGTERM): long polls answer with what they have.
    make(store, submitted=True)
    version = store.version("j1")[0]
    ended = []

    def wait(kind):
        started = time.monotonic()
        if kind == "change":
            woke = store.wait_for_change("j1", version, 30)
        else:
            woke = store.wait_for_end("j1", 30)
        ended.append((kind, woke, time.monotonic() - started))

    waiters = [threading.Thread(target=wait, args=(kind,)) for kind in ("change", "end")]
    for waiter in waiters:
        waiter.start()
    # Both in their waits: subscribed to the job (nothing wakes them but the stop).
    subscribers = (store.wakeup if hasattr(store, "wakeup") else store._listening()).subscribers
    wait_for(lambda: len(subscribers._events.get("j1", ())) == 2, 5, message="two waiters")
    assert ended == []
    stopped = time.monotonic()
    store.stop_waits()
    for waiter in waiters:
        waiter.join(5)
    assert sorted((kind, woke) for kind, woke, _ in ended) == [("change", False), ("end", False)]
    assert time.monotonic() - stopped < 1.0
    # The ones after: at once, as if their time had run out; a final job still says so.
    started = time.monotonic()
    assert store.wait_for_change("j1", version, 30) is False
    assert store.wait_for_end("j1", 30) is False
    assert time.monotonic() - started < 1.0
    store.finish("j1", JobStatus.COMPLETED)
    assert store.wait_for_end("j1", 30) is True


def test_a_batch_wait_ends_at_once_once_waits_are_stopped(store):
    # Its loop waits on one job after another: with every wait over at once it must not spin
    # until its time runs out.
    make(store, submitted=True)
    batch = store.create_batch(Batch(id="b1", idempotency_key="k", job_ids=["j1"]))
    store.stop_waits()
    started = time.monotonic()
    jobs = batches.wait_final(store, batch, 30)
    assert [job.id for job in jobs] == ["j1"] and not jobs[0].finished
    assert time.monotonic() - started < 1.0


def test_a_waiter_after_the_end_wakes_on_the_follow_ups_of_a_final_job(store):
    make(store, submitted=True)
    store.finish("j1", JobStatus.COMPLETED)
    version = store.version("j1")[0]
    assert store.wait_for_change("j1", version, 30) is True  # final: at once
    assert store.wait_for_change("j1", version, 0.05, after_final=True) is False
    woke = threading.Event()

    def wait():
        if store.wait_for_change("j1", version, 30, after_final=True):
            woke.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert not woke.wait(0.3)  # final, but nothing changed since
    store.record_option("j1", "saved_as", "copy.png")  # what save_to_disk records later
    assert woke.wait(5)
    waiter.join()


def test_a_waiter_for_the_end_sleeps_through_progress_and_wakes_at_the_end(store):
    make(store, submitted=True)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(store.wait_for_end("j1", 30)))
    waiter.start()
    store.mark_processing("p1")
    store.record_progress("p1", 1, 4, None)
    waiter.join(0.3)
    assert waiter.is_alive() and answers == []  # changes, but not the end
    store.finish("j1", JobStatus.COMPLETED)
    waiter.join(5)
    assert answers == [True]
    assert store.wait_for_end("j1", 5) is True  # final already: at once
    assert store.wait_for_end("gone", 5) is True


def test_versions_since_lists_unfinished_jobs_and_recent_changes(store):
    make(store, "old", "p-old", submitted=True)
    store.finish("old", JobStatus.COMPLETED)
    make(store, "open", "p-open")
    cut = store.version("old")[0]
    make(store, "new", "p-new", submitted=True)
    store.finish("new", JobStatus.FAILED, error="x")
    found = store.versions_since(cut)
    assert set(found) == {"open", "new"}
    assert found["new"] == store.version("new")
    assert set(store.versions_since(0.0)) == {"old", "open", "new"}


def test_versions_of_names_the_jobs_that_exist(store):
    # More ids than SQLite binds in one statement.
    ids = [f"j{i}" for i in range(0, 1200, 2)]
    for job_id in ids[:3]:
        make(store, job_id, f"p-{job_id}")
    store.finish("j2", JobStatus.COMPLETED)
    make(store, "j1199", "p-last")
    found = store.versions_of([*ids, "j1199", "j1199"])
    assert found == {job_id: store.version(job_id) for job_id in ("j0", "j2", "j4", "j1199")}
    assert found["j2"][1] == "completed"
    assert store.versions_of([]) == {}


def test_last_activity_is_the_newest_creation_start_or_end(store):
    assert store.last_activity() is None
    make(store, "a", "pa", submitted=True)
    assert store.last_activity() == store.get("a").created_at
    store.mark_processing("pa")
    assert store.last_activity() == store.get("a").started_at
    store.finish("a", JobStatus.COMPLETED)
    assert store.last_activity() == store.get("a").finished_at
    make(store, "b", "pb", submitted=True)
    assert store.last_activity() == store.get("b").created_at
    store.mark_processing("pb")
    store.finish("b", JobStatus.FAILED, error="x")
    make(store, "c", "pc", submitted=True)
    store.mark_processing("pc")
    assert store.last_activity() == store.get("c").started_at


def test_jobs_are_counted_and_paged_per_owner(store):
    make(store, "a1", "pa1", owner="alice")
    make(store, "a2", "pa2", owner="alice")
    make(store, "b1", "pb1", owner="bob")
    make(store, "n1", "pn1")  # made without API keys
    store.finish("a2", JobStatus.FAILED, error="x")
    assert store.count(owner="alice") == 2 and store.count(["queued"], owner="alice") == 1
    page, total = store.page(None, 10, 0, owner="bob")
    assert [j.id for j in page] == ["b1"] and total == 1
    assert store.page(None, 10, 0)[1] == 4
    assert store.get("a1").owner == "alice" and store.get("n1").owner is None


def test_an_idempotency_key_is_unique_per_owner_only(store):
    make(store, "a1", "pa1", owner="alice", idempotency_key="k")
    make(store, "b1", "pb1", owner="bob", idempotency_key="k")
    make(store, "n1", "pn1", idempotency_key="k")
    assert store.find_by_idempotency_key("k", "alice").id == "a1"
    assert store.find_by_idempotency_key("k", "bob").id == "b1"
    assert store.find_by_idempotency_key("k").id == "n1"
    assert store.find_by_idempotency_key("k", "carol") is None
    for owner in ("alice", None):
        with pytest.raises(DuplicateIdempotencyKey):
            make(store, f"twin-{owner}", f"pt-{owner}", owner=owner, idempotency_key="k")


def test_a_completed_jobs_output_files_are_its_owners(store):
    make(store, "a1", "pa1", owner="alice")
    make(store, "b1", "pb1", owner="bob")
    images = [
        {"filename": "x.png", "subfolder": "", "type": "output", "node_id": "9"},
        {"filename": "y.png", "subfolder": "sub", "type": "output", "node_id": "9"},
        {"filename": "p.png", "subfolder": "", "type": "temp", "node_id": "8"},
    ]
    store.finish("a1", JobStatus.COMPLETED, images)
    store.add_file("a1", "saved-copy.png")
    assert store.files_of("alice") == {"x.png", "sub/y.png", "saved-copy.png"}
    assert store.owns_file("alice", "sub/y.png") and not store.owns_file("bob", "x.png")
    assert not store.owns_file("alice", "p.png")  # a preview is not in the output folder
    assert store.files_of("bob") == set()
    purged = store.purge(finished_before=float("inf"))
    assert [j.id for j in purged] == ["a1"] and store.files_of("alice") == set()


def test_a_batch_idempotency_key_is_unique_per_owner_only(store):
    store.create_batch(Batch(id="b1", idempotency_key="k", created_at=1, owner="alice"))
    store.create_batch(Batch(id="b2", idempotency_key="k", created_at=2, owner="bob"))
    store.create_batch(Batch(id="b3", idempotency_key="k", created_at=3))
    assert store.find_batch_by_idempotency_key("k", "alice").id == "b1"
    assert store.find_batch_by_idempotency_key("k", "bob").owner == "bob"
    assert store.find_batch_by_idempotency_key("k").id == "b3"
    assert store.find_batch_by_idempotency_key("k", "carol") is None
    for owner in ("alice", None):
        with pytest.raises(DuplicateIdempotencyKey):
            store.create_batch(Batch(id=f"t-{owner}", idempotency_key="k", owner=owner))
