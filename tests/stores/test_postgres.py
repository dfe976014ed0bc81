"""What only the shared store does: claims, leases, fencing, cancel requests, nodes, migrations
under concurrency, and a database that goes away (a real PostgreSQL server)."""

import subprocess
import sys
import threading
import time

import psycopg
import pytest

from api.exceptions import DuplicateIdempotencyKey, StoreUnavailable
from api.job import Job, JobStatus
from api.jobstore import NodeInfo
from api.postgres_store import PostgresJobStore
from tests.support.jobs import GRAPH, add_job
from tests.support.postgres import empty_database

WORKFLOWS = ["wf", "other"]


def queued(store, n: int, workflow: str = "wf", **fields) -> list[str]:
    ids = [f"{workflow}-{i}" for i in range(n)]
    for job_id in ids:
        add_job(store, job_id, None, workflow=workflow, **fields)
    return ids


def new_job(job_id: str, workflow: str = "wf", **fields) -> Job:
    return Job.new(
        id=job_id, prompt_id=f"{job_id}-planned", client_id="c", workflow=workflow, prompt="p",
        graph=GRAPH, params={}, **fields,
    )  # fmt: skip


def test_a_new_job_is_written_claimed_by_its_node_while_it_has_room(pg_store):
    first = pg_store.create_claimed(new_job("j1"), "a", WORKFLOWS, max_held=2, lease=30)
    assert (first.node, first.prompt_id, first.status) == ("a", "j1-planned", JobStatus.QUEUED)
    assert pg_store.get("j1").node == "a" and pg_store.get("j1").graph == GRAPH
    # What it returns is the row as written (the database's clock), the graph as sent.
    assert first == pg_store.get("j1")
    assert pg_store.create_claimed(new_job("j2"), "a", WORKFLOWS, 2, 30).node == "a"
    # Full: written for the first node with room, which claims it as claim() does.
    third = pg_store.create_claimed(new_job("j3"), "a", WORKFLOWS, 2, 30)
    assert third.node is None and third == pg_store.get("j3")
    assert [j.id for j in pg_store.claim("b", WORKFLOWS, max_held=1, lease=30)] == ["j3"]


def test_a_new_job_its_node_cannot_run_is_written_for_another(pg_store):
    flux = pg_store.create_claimed(new_job("flux", "flux"), "a", WORKFLOWS, 5, 30)
    pinned = pg_store.create_claimed(new_job("pinned", pinned_node="b"), "a", WORKFLOWS, 5, 30)
    assert flux == pg_store.get("flux") and pinned == pg_store.get("pinned")
    assert flux.node is None and pinned.node is None
    assert pg_store.create_claimed(new_job("p2", pinned_node="b"), "b", WORKFLOWS, 5, 30).node


def test_new_jobs_written_at_once_never_pass_the_nodes_room(pg_store):
    start = threading.Barrier(8, timeout=30)
    claimed = []

    def submit(n: int) -> None:
        store = PostgresJobStore(pg_store.url)
        start.wait()
        if store.create_claimed(new_job(f"c{n}"), "a", WORKFLOWS, max_held=3, lease=30).node:
            claimed.append(n)
        store.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 3
    assert sum(1 for j in pg_store.unfinished() if j.node == "a") == 3


def test_a_second_new_job_under_the_same_key_is_a_duplicate(pg_store):
    pg_store.create_claimed(new_job("k1", idempotency_key="key"), "a", WORKFLOWS, 5, 30)
    with pytest.raises(DuplicateIdempotencyKey):
        pg_store.create_claimed(new_job("k2", idempotency_key="key"), "a", WORKFLOWS, 5, 30)
    assert pg_store.get("k2") is None


def test_claims_go_by_priority_then_age_and_stop_at_the_nodes_room(pg_store):
    ids = queued(pg_store, 4)
    add_job(pg_store, "urgent", None, options={"priority": "high"})
    claimed = pg_store.claim("a", WORKFLOWS, max_held=3, lease=30)
    assert [j.id for j in claimed] == ["urgent", ids[0], ids[1]]
    assert all(j.node == "a" and j.prompt_id for j in claimed)  # each run has its own token
    assert len({j.prompt_id for j in claimed}) == 3
    assert pg_store.claim("a", WORKFLOWS, max_held=3, lease=30) == []  # no room left
    pg_store.finish(claimed[0].id, JobStatus.COMPLETED, prompt_id=claimed[0].prompt_id)
    assert [j.id for j in pg_store.claim("a", WORKFLOWS, max_held=3, lease=30)] == [ids[2]]


def test_a_node_claims_only_what_it_can_run(pg_store):
    queued(pg_store, 1, workflow="flux")
    assert pg_store.claim("cpu-node", ["wf"], max_held=5, lease=30) == []
    assert [j.workflow for j in pg_store.claim("gpu-node", ["flux"], 5, 30)] == ["flux"]


def test_concurrent_claims_take_each_job_exactly_once(pg_store):
    ids = set(queued(pg_store, 60))
    taken: dict[str, list[str]] = {f"n{i}": [] for i in range(6)}

    # Every node claims once before any finishes: one fast node cannot take it all alone.
    first_claims = threading.Barrier(len(taken), timeout=30)

    def node(name: str) -> None:
        store = PostgresJobStore(pg_store.url)
        first = True
        while True:
            claimed = store.claim(name, WORKFLOWS, max_held=2, lease=30)
            if first:
                first_claims.wait()
                first = False
            if not claimed and all(j.node for j in store.unfinished()):
                break  # nothing left that nobody holds
            for job in claimed:
                taken[name].append(job.id)
                store.finish(job.id, JobStatus.COMPLETED, prompt_id=job.prompt_id)
        store.close()

    threads = [threading.Thread(target=node, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [job_id for jobs in taken.values() for job_id in jobs]
    assert sorted(everything) == sorted(ids)  # every job, none twice
    assert all(taken.values())  # the work was shared


def test_a_lapsed_lease_hands_the_job_back_and_fences_the_old_owner(pg_store):
    queued(pg_store, 1)
    (job,) = pg_store.claim("a", WORKFLOWS, max_held=1, lease=-1)  # lapsed at once
    pg_store.mark_submitted(job.id, job.prompt_id, planned=job.prompt_id)
    pg_store.mark_processing(job.prompt_id)
    assert [j.id for j in pg_store.expired()] == [job.id]
    assert pg_store.requeue(job.id, job.prompt_id) is True
    again = pg_store.get(job.id)
    assert (again.status, again.node, again.prompt_id, again.attempts) == ("queued", None, None, 2)
    # The old owner comes back: nothing it says about its run changes the job.
    assert pg_store.record_progress(job.prompt_id, 3, 4, None) is False
    assert pg_store.mark_processing(job.prompt_id) is False
    assert pg_store.finish(job.id, JobStatus.COMPLETED, prompt_id=job.prompt_id) is None
    assert pg_store.mark_submitted(job.id, "late", planned=job.prompt_id) is False
    (retaken,) = pg_store.claim("b", WORKFLOWS, max_held=1, lease=30)
    assert retaken.id == job.id and retaken.prompt_id != job.prompt_id
    assert pg_store.requeue(job.id, job.prompt_id) is False  # a stale hand-back too


def test_renewing_keeps_a_nodes_jobs(pg_store):
    queued(pg_store, 2)
    pg_store.claim("a", WORKFLOWS, max_held=2, lease=-1)  # lapsed at once
    assert pg_store.renew_leases("a", 30) == 2
    assert pg_store.expired() == []


def test_a_cancel_request_reaches_the_node_and_stops_claims(pg_store):
    queued(pg_store, 2)
    (held,) = pg_store.claim("a", WORKFLOWS, max_held=1, lease=30)
    assert pg_store.request_cancel(held.id) is True
    assert [j.id for j in pg_store.cancel_requests("a")] == [held.id]
    waiting = next(j for j in pg_store.unfinished() if j.node is None)
    assert pg_store.finish(held.id, JobStatus.CANCELLED, unclaimed=True) is None  # held
    assert pg_store.finish(waiting.id, JobStatus.CANCELLED, unclaimed=True).node is None
    assert pg_store.get(waiting.id).status == "cancelled"
    assert pg_store.claim("b", WORKFLOWS, max_held=5, lease=30) == []


def test_nodes_report_themselves(pg_store):
    pg_store.heartbeat(NodeInfo(id="a", comfyui_url="http://a:8188", workflows=["wf"], held=1))
    pg_store.heartbeat(NodeInfo(id="b", comfyui_url="http://b:8188"))
    nodes = {info.id: (info, age) for info, age, _ in pg_store.nodes()}
    assert nodes["a"][0].workflows == ["wf"] and nodes["a"][0].held == 1
    assert 0 <= nodes["b"][1] < 5


def test_a_status_asks_about_the_nodes_only_for_a_job_no_node_holds(pg_store, monkeypatch):
    from api.fleet import Overview

    queued(pg_store, 2)
    (held,) = pg_store.claim("a", WORKFLOWS, max_held=1, lease=30)
    waiting = next(job for job in pg_store.unfinished() if job.node is None)
    pg_store.heartbeat(NodeInfo(id="a", comfyui_url="http://a:8188", workflows=["other"]))
    asked = []
    for name in ("nodes", "jobs_done"):
        read = getattr(pg_store, name)
        monkeypatch.setattr(
            pg_store, name, lambda read=read, name=name: asked.append(name) or read()
        )
    pg_store.finish(held.id, JobStatus.COMPLETED, prompt_id=held.prompt_id)
    assert Overview(pg_store, 30).waiting_reason(pg_store.get(held.id)) is None
    assert asked == []  # a finished job waits for nothing: no query about the nodes
    reason = Overview(pg_store, 30).waiting_reason(waiting)
    assert "no live node can run workflow 'wf'" in reason and asked == ["nodes"]
    assert Overview(pg_store, 30).as_list()[0]["jobs_done"] == 1


def test_a_pooled_connection_whose_server_process_ended_is_replaced_before_use(pg_store):
    add_job(pg_store, "j1")
    with psycopg.connect(pg_store.url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid != pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 1  # the pool's idle connection among them (each waited for until gone)
    assert pg_store.get("j1").id == "j1"  # not StoreUnavailable: the pool opened a new one


def until_listening(store: PostgresJobStore, writer: PostgresJobStore) -> None:
    """Returns once the store's listener has connected (and woken everyone as it does)."""
    with store.watch("(listening)") as heard:
        for _ in range(100):  # a notification sent before its LISTEN is not kept: send again
            writer._run("SELECT pg_notify('sidecar_jobs', '(listening)')")
            if heard.wait(0.1):
                return
    raise AssertionError("the store's listener did not connect")


def test_a_notification_tells_waiters_the_version_so_they_need_not_read_it(pg_store):
    add_job(pg_store, "j1", submitted=True)
    writer = PostgresJobStore(pg_store.url)
    until_listening(pg_store, writer)
    reads, first_read, ended = [], threading.Event(), threading.Event()
    read = pg_store.version

    def counted(job_id):
        version = read(job_id)
        reads.append(job_id)
        first_read.set()
        return version

    pg_store.version = counted
    with pg_store.watch("j1") as subscribed:
        waiter = threading.Thread(target=lambda: pg_store.wait_for_end("j1", 30) and ended.set())
        waiter.start()
        assert first_read.wait(10)  # the changes below come after the waiter's read
        writer.mark_processing("p1")
        writer.record_progress("p1", 1, 4, None)
        assert subscribed.wait(10)
        writer.finish("j1", JobStatus.COMPLETED)
        assert ended.wait(10)
    waiter.join(5)
    writer.close()
    # Read once, before the first wait; every change after it came with its version. A late
    # notification of an older change could not pass for a newer one: it would be read.
    assert reads == ["j1"]


def test_a_version_is_read_back_from_the_payload_it_was_sent_in(pg_store):
    from api.postgres_listener import told

    job = add_job(pg_store, "job with spaces", submitted=True)
    with psycopg.connect(pg_store.url, autocommit=True) as conn:
        conn.execute("LISTEN sidecar_jobs")
        pg_store.mark_processing("p1")
        (notice,) = list(conn.notifies(timeout=5, stop_after=1))
    job_id, version = told(notice.payload)
    assert job_id == job.id and version == pg_store.version(job.id)
    assert told("j1") == ("j1", None)  # a job id alone: the waiter reads the version
    assert told("a b c") == ("a b c", None)


def test_a_nodes_dispatcher_is_not_woken_by_a_job_that_node_itself_passed_over(pg_store):
    add_job(pg_store, "barrier")
    pg_store.own_node = "a"
    writer = PostgresJobStore(pg_store.url)
    until_listening(pg_store, writer)
    with pg_store.queue_events() as queue, pg_store.watch("barrier") as barrier:
        writer.notify_queue("a")  # node a could not take a job: its dispatcher cannot either
        writer.mark_processing("p1")  # notifications come in order: this one comes after
        assert barrier.wait(10) and not queue.is_set()
        writer.notify_queue("b")
        assert queue.wait(10)
        queue.clear()
        writer.notify_queue()
        assert queue.wait(10)
    writer.close()


def test_only_the_node_that_held_a_job_is_woken_for_the_room_its_end_makes(pg_store):
    writer = PostgresJobStore(pg_store.url)
    held_by_a = writer.create_claimed(new_job("on-a"), "a", WORKFLOWS, max_held=1, lease=30)
    held_by_b = writer.create_claimed(new_job("on-b"), "b", WORKFLOWS, max_held=1, lease=30)
    add_job(pg_store, "barrier")
    pg_store.own_node = "b"
    until_listening(pg_store, writer)
    with pg_store.queue_events() as queue, pg_store.watch("barrier") as barrier:
        writer.finish(held_by_a.id, JobStatus.COMPLETED, prompt_id=held_by_a.prompt_id)
        writer.mark_processing("p1")  # notifications come in order: this one comes after
        assert barrier.wait(10) and not queue.is_set()  # b's room did not change
        writer.finish(held_by_b.id, JobStatus.COMPLETED, prompt_id=held_by_b.prompt_id)
        assert queue.wait(10)
    writer.close()


def test_the_dispatcher_is_told_whether_the_queue_spoke_or_only_a_jobs_end(pg_store):
    """A cancel request comes on the queue channel: a node's dispatcher, woken for the room a
    job's end made, need not ask for cancel requests then (Fleet.run_dispatcher)."""
    writer = PostgresJobStore(pg_store.url)
    held = writer.create_claimed(new_job("on-b"), "b", WORKFLOWS, max_held=1, lease=30)
    pg_store.own_node = "b"
    until_listening(pg_store, writer)
    before = pg_store.queue_notices()
    with pg_store.queue_events() as queue:
        writer.finish(held.id, JobStatus.COMPLETED, prompt_id=held.prompt_id)
        assert queue.wait(10)
    assert pg_store.queue_notices() == before
    add_job(pg_store, "waiting", None)
    with pg_store.queue_events() as queue:
        assert writer.request_cancel("waiting")
        assert queue.wait(10)
    assert pg_store.queue_notices() != before
    writer.close()


def test_a_finished_job_is_found_by_its_image_name(pg_store):
    queued(pg_store, 1)
    (job,) = pg_store.claim("a", WORKFLOWS, max_held=1, lease=30)
    image = {"filename": "x_00001_.png", "subfolder": "run", "type": "output", "node_id": "9"}
    pg_store.finish(job.id, JobStatus.COMPLETED, [image], prompt_id=job.prompt_id)
    found = pg_store.find_by_image("run/x_00001_.png")
    assert found.id == job.id and found.node == "a"
    assert pg_store.find_by_image("x_00001_.png") is None


def test_nodes_starting_at_once_migrate_once(postgres):
    empty_database(postgres.url)
    code = "import sys; from api.postgres_schema import migrate; print(migrate(sys.argv[1]))"
    starts = [
        subprocess.Popen([sys.executable, "-c", code, postgres.url], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    assert all(p.wait(60) == 0 for p in starts)
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_a_database_that_is_down_is_a_clear_error_not_a_hang(pg_store, postgres):
    store = PostgresJobStore(postgres.url, connect_timeout=2)
    add_job(store)
    postgres.stop("immediate")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.get("j1")
        with pytest.raises(StoreUnavailable):
            store.claim("a", WORKFLOWS, 1, 30)
        assert time.monotonic() - started < 10  # bounded by the connect timeout, no hang
    finally:
        postgres.start()
    assert store.get("j1").id == "j1"  # and it reconnects by itself
    store.close()


def test_a_nodes_senders_take_only_the_uploads_of_its_own_jobs(pg_store):
    from api.delivery import DeliveryKind, NewDelivery

    for node in ("a", "b"):
        job = pg_store.create_claimed(new_job(node), node, WORKFLOWS, max_held=1, lease=30)
        upload = NewDelivery(DeliveryKind.UPLOAD, "upload", f"k/{node}.png", 3600, payload={})
        pg_store.finish(job.id, JobStatus.COMPLETED, [], deliveries=[upload])
    taken = pg_store.claim_delivery("sender-of-b", 60, uploads_of="b")
    assert taken.target == "k/b.png"
    assert pg_store.claim_delivery("sender-of-b", 60, uploads_of="b") is None  # a's is a's
    assert pg_store.claim_delivery("sender-of-a", 60, uploads_of="a").target == "k/a.png"
