"""Status files for nginx in public deployments (api/status_docs.py): each file is what GET
/api/status/<job_id> answers, it follows its row, and it is never there where the answer
depends on who asks."""

import contextlib
import json
import os
import threading
import time

import pytest

from api import create_app, status_docs
from api.job import JobStatus
from api.status_docs import StatusDocs
from tests.support.jobs import add_job
from tests.support.sidecar import wait_for
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

PUBLIC = {"allow_unauthenticated": True}
IMAGE = {"filename": "a b#1.png", "subfolder": "day 1", "type": "output", "node_id": "9"}


@pytest.fixture
def public_app(tmp_path, workflows_dir, fake_comfy):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(tmp_path, workflows_dir, status_docs_dir=str(tmp_path / "docs"), **PUBLIC)
    return create_app(config)


@contextlib.contextmanager
def writing(docs: StatusDocs):
    """The writer thread running for the block, stopped and joined after it."""
    stop = threading.Event()
    writer = threading.Thread(target=docs.run, args=(stop,), name="status-docs")
    writer.start()
    try:
        yield
    finally:
        stop.set()
        docs.changed(None)
        writer.join(10)
    assert not writer.is_alive()


def docs_of(app) -> StatusDocs:
    s = app.extensions["sidecar"]
    return StatusDocs(s.config.status_docs_dir, s.store, s.object_url())


def polled(docs: StatusDocs, store, job_id: str) -> None:
    """What the sidecar does when it answers a plain poll of the job (nginx found no file)."""
    docs.want(store.get(job_id))


def following_on_a_clock(public_app, monkeypatch) -> tuple:
    """The store, a writer that follows every announcement on the announcing thread (what the
    sweeper does first, without its thread), and the clock its gaps are timed by (a list of
    one monotonic time, moved by the test)."""
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    store.wakeup.follow_all(docs.changed)
    clock = [1000.0]
    monkeypatch.setattr(status_docs.time, "monotonic", lambda: clock[0])
    return store, docs, clock


def read(docs: StatusDocs, job_id: str) -> dict | None:
    """The job's file, None without one: also for a moment while the file is replaced (the old
    one removed, then the new one renamed in), so a test polling a file that another thread
    may be writing must take None as "not yet"."""
    try:
        return json.loads(docs.path(job_id).read_bytes())
    except FileNotFoundError:
        return None


def test_a_file_is_what_the_api_answers_for_every_kind_of_job(public_app):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    add_job(store, "queued", None)
    add_job(store, "done", "p-done", submitted=True, options={"metadata": {"n": 1}})
    store.finish("done", JobStatus.COMPLETED, [IMAGE])
    add_job(store, "broken", "p-broken", submitted=True)
    store.finish("broken", JobStatus.FAILED, error="boom", error_details={"node_id": "3"})
    docs.write(["queued", "done", "broken"])
    client = public_app.test_client()
    for job_id in ("queued", "done", "broken"):
        assert read(docs, job_id) == client.get(f"/api/status/{job_id}").get_json(), job_id
    assert read(docs, "done")["image_url"] == "/api/image/day%201/a%20b%231.png"


def test_the_writer_follows_each_change_and_removes_what_is_gone(public_app):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    with writing(docs):
        add_job(store, "j1", "p1", submitted=True)
        add_job(store, "unpolled", "p2", submitted=True)
        store.set_queue_positions({"p1": 1, "p2": 2})
        polled(docs, store, "j1")
        # Written on the announcement of the poll's wish, not at the next sweep.
        wait_for(lambda: read(docs, "j1"), 1.5, 0.01, "the queued job's file")
        assert not os.path.exists(docs._marker("j1"))  # it has done its part
        store.mark_processing("p1")
        store.record_progress("p1", 3, 4, None)
        wait_for(lambda: (read(docs, "j1") or {}).get("progress") == 0.75, 3, 0.01, "progress")
        store.finish("j1", JobStatus.COMPLETED, [IMAGE])
        final = wait_for(
            lambda: (d := read(docs, "j1")) and d["status"] == "completed" and d, 1.5, 0.01, "end"
        )
        assert final["version"] == store.get("j1").updated_at
        store.discard("j1")
        wait_for(lambda: not docs.path("j1").exists(), 1.5, 0.01, "the file to go")
        # Nobody polled it plainly: its clients wait otherwise, and the sidecar answers a poll.
        store.mark_processing("p2")
        store.finish("unpolled", JobStatus.COMPLETED, [IMAGE])
        docs.sweep()
        assert read(docs, "unpolled") is None


def test_what_a_thread_that_handed_off_announces_is_written_by_the_writer_thread(
    public_app, monkeypatch
):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    writers = []
    write = docs._write

    def recording(job):
        writers.append((threading.current_thread().name, job.id, job.status.value))
        return write(job)

    monkeypatch.setattr(docs, "_write", recording)

    def reading_events():
        docs.hand_off()
        add_job(store, "j1", "p1", submitted=True)
        polled(docs, store, "j1")
        store.mark_processing("p1")
        store.finish("j1", JobStatus.COMPLETED, [IMAGE])

    with writing(docs):
        events = threading.Thread(target=reading_events, name="events")
        events.start()
        events.join(10)
        wait_for(lambda: (read(docs, "j1") or {}).get("status") == "completed", 3, 0.01, "end")
        # This thread did not hand off: it writes what it announces itself.
        add_job(store, "j2", "p2", submitted=True)
        polled(docs, store, "j2")
        store.mark_processing("p2")
        assert read(docs, "j2")["status"] == "processing"
    assert {name for name, job, _ in writers if job == "j1"} == {"status-docs"}
    assert ("MainThread", "j2", "processing") in writers


def test_changes_within_a_status_are_held_back_and_the_last_one_is_written(public_app, monkeypatch):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    clock = [1000.0]
    monkeypatch.setattr(status_docs.time, "monotonic", lambda: clock[0])
    add_job(store, "j1", "p1", submitted=True)
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["queue_position"] is None
    store.set_queue_positions({"p1": 3})
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["queue_position"] == 3  # the first place: at once
    store.set_queue_positions({"p1": 2})
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["queue_position"] == 3  # the next ones: a countdown, held
    docs.sweep()  # a held change is not a missed one
    assert read(docs, "j1")["queue_position"] == 3
    store.mark_processing("p1")
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["status"] == "processing"  # a new status: at once
    store.record_progress("p1", 1, 4, None)
    docs.write(["j1"], held=True)
    store.record_progress("p1", 2, 4, None)
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["progress"] == 0
    clock[0] += status_docs.REWRITE_GAP[JobStatus.PROCESSING]
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["progress"] == 0.5
    store.record_progress("p1", 3, 4, None)
    docs.write(["j1"])  # not held: the sweep of a file the writer does not know, say
    assert read(docs, "j1")["progress"] == 0.75
    store.finish("j1", JobStatus.COMPLETED, [IMAGE])
    docs.write(["j1"], held=True)
    assert read(docs, "j1")["status"] == "completed"


def test_the_writer_writes_a_held_change_when_its_gap_has_passed(public_app, monkeypatch):
    monkeypatch.setitem(status_docs.REWRITE_GAP, JobStatus.PROCESSING, 0.3)
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    with writing(docs):
        add_job(store, "j1", "p1", submitted=True)
        polled(docs, store, "j1")
        store.mark_processing("p1")
        wait_for(lambda: (read(docs, "j1") or {}).get("status") == "processing", 3, 0.01, "start")
        for step in range(1, 5):
            store.record_progress("p1", step, 8, None)
        # No announcement comes after the last step: the writer comes back for it.
        wait_for(lambda: (read(docs, "j1") or {}).get("progress") == 0.5, 3, 0.01, "the last step")


def test_a_change_held_by_a_write_wakes_the_sleeping_sweeper(public_app):
    # A step announced as its gap ends is not held by the announcer, but the sweeper writes the
    # same job meanwhile, so the announcer's write finds a fresh file and holds the step. Nothing
    # else woke the sweeper for it (the job's later steps are held as already noted), and it
    # slept until its next sweep, 5 s on: the one way found for the last step's file to be late
    # as in the test above, which CI once failed.
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    add_job(store, "j1", "p1", submitted=True)
    store.mark_processing("p1")
    docs.write(["j1"], held=True)
    with docs._lock:
        docs._wakes_at = time.monotonic() + status_docs.SWEEP_SECONDS  # the sweeper asleep
    store.record_progress("p1", 1, 4, None)
    docs.write(["j1"], held=True)  # the announcer's write, after the sweeper's
    assert read(docs, "j1")["progress"] == 0  # held
    assert docs._woken.is_set()  # the sweeper comes back for it when its gap has passed
    assert docs._later["j1"] < docs._wakes_at


def test_a_change_is_written_by_the_thread_that_announces_it(public_app, monkeypatch):
    # No thread of the status files' own is woken for a change (a wake-up costs about what a
    # file does): the announcing thread writes it before its write call returns. A held change
    # is written with the first announcement of its job after the gap, and by the sweeper's
    # timer only another gap later.
    store, docs, clock = following_on_a_clock(public_app, monkeypatch)
    gap = status_docs.REWRITE_GAP[JobStatus.PROCESSING]
    add_job(store, "j1", "p1", submitted=True)
    store.set_queue_positions({"p1": 2})
    assert read(docs, "j1") is None  # nobody has polled it plainly yet
    polled(docs, store, "j1")
    assert read(docs, "j1")["queue_position"] == 2  # written on the poll's own thread
    store.set_queue_positions({"p1": 1})
    assert read(docs, "j1")["queue_position"] == 2  # held: the next places are a countdown
    store.mark_processing("p1")
    assert read(docs, "j1")["status"] == "processing"
    store.record_progress("p1", 1, 4, None)
    assert read(docs, "j1")["progress"] == 0  # held
    assert docs._later == {"j1": clock[0] + 2 * gap}  # the timer comes two gaps on
    clock[0] += gap
    store.record_progress("p1", 2, 4, None)
    assert read(docs, "j1")["progress"] == 0.5  # the gap has passed: with this announcement
    assert docs._later == {}
    store.finish("j1", JobStatus.COMPLETED, [IMAGE])
    assert read(docs, "j1")["status"] == "completed"


def test_a_queued_file_is_rewritten_less_often_the_further_back_it_waits(public_app, monkeypatch):
    # Every waiting job's place moves at each run's end: with a hundred waiting and a file each
    # rewritten every ten seconds, that was twenty files a 2 s run.
    store, docs, clock = following_on_a_clock(public_app, monkeypatch)
    near, far = status_docs.REWRITE_GAP[JobStatus.QUEUED], 60 * status_docs.PLACE_GAP_PER_PLACE
    assert far > near
    add_job(store, "near", "p1", submitted=True)
    add_job(store, "far", "p2", submitted=True)
    store.set_queue_positions({"p1": 4, "p2": 60})
    polled(docs, store, "near")
    polled(docs, store, "far")
    store.set_queue_positions({"p1": 3, "p2": 59})
    assert (read(docs, "near")["queue_position"], read(docs, "far")["queue_position"]) == (4, 60)
    assert docs._later == {"near": clock[0] + 2 * near, "far": clock[0] + 2 * far}
    clock[0] += near
    store.set_queue_positions({"p1": 2, "p2": 58})
    assert (read(docs, "near")["queue_position"], read(docs, "far")["queue_position"]) == (2, 60)
    clock[0] += far - near
    store.set_queue_positions({"p1": 1, "p2": 57})
    assert (read(docs, "near")["queue_position"], read(docs, "far")["queue_position"]) == (1, 57)
    # Its next gap is its new place's: shorter as it comes nearer.
    assert docs._written["far"][2] == 57 * status_docs.PLACE_GAP_PER_PLACE
    # A new status is written at once, however far back the job was.
    store.mark_processing("p2")
    assert read(docs, "far")["status"] == "processing"


def test_the_jobs_one_write_moves_are_written_with_one_read_of_their_rows(public_app, monkeypatch):
    store, docs, clock = following_on_a_clock(public_app, monkeypatch)
    places = {f"p{n}": n for n in range(1, 6)}
    for n in range(1, 6):
        add_job(store, f"j{n}", f"p{n}", submitted=True)
    store.set_queue_positions(places)
    for n in range(1, 6):
        polled(docs, store, f"j{n}")
    reads = []
    get_many = store.get_many
    monkeypatch.setattr(store, "get_many", lambda *a, **k: reads.append(a) or get_many(*a, **k))
    clock[0] += status_docs.REWRITE_GAP[JobStatus.QUEUED]
    store.set_queue_positions({prompt: place - 1 for prompt, place in places.items()})
    assert [read(docs, f"j{n}")["queue_position"] for n in range(1, 6)] == [0, 1, 2, 3, 4]
    assert len(reads) == 1 and sorted(reads[0][0]) == [f"j{n}" for n in range(1, 6)]


def test_only_a_job_polled_plainly_while_unfinished_gets_a_file(public_app):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    store.wakeup.follow_all(docs.changed)
    add_job(store, "j1", "p1", submitted=True)
    store.mark_processing("p1")
    store.record_progress("p1", 1, 4, None)
    assert read(docs, "j1") is None and not docs.folder.exists()
    polled(docs, store, "j1")
    assert read(docs, "j1")["progress"] == 0.25
    polled(docs, store, "j1")
    assert os.listdir(docs.folder) == ["j1.json"]
    # A poll that comes while the file is replaced (removed, then renamed in) asks again: its
    # announcement is held (the job's file is recent), and the next write takes the marker away.
    docs.path("j1").unlink()
    polled(docs, store, "j1")
    assert os.path.exists(docs._marker("j1"))
    store.record_progress("p1", 2, 4, None)
    docs.write(["j1"])
    assert not os.path.exists(docs._marker("j1"))
    assert read(docs, "j1")["progress"] == 0.5
    # A final job gets none: nginx keeps the sidecar's answer. Nor one that inlines images.
    add_job(store, "done", "p2", submitted=True)
    store.finish("done", JobStatus.COMPLETED, [IMAGE])
    add_job(store, "inline", "p3", submitted=True, options={"include_base64": True})
    polled(docs, store, "done")
    polled(docs, store, "inline")
    assert os.listdir(docs.folder) == ["j1.json"]


def test_the_sidecars_answer_to_a_plain_poll_asks_for_a_file(public_app, monkeypatch):
    s = public_app.extensions["sidecar"]
    docs = docs_of(public_app)
    s.store.wakeup.follow_all(docs.changed)
    monkeypatch.setattr(type(s), "status_docs", property(lambda _: docs))
    add_job(s.store, "j1", "p1", submitted=True)
    client = public_app.test_client()
    # Queries are the sidecar's to answer: nginx sends only plain polls from files.
    assert client.get("/api/status/j1?since=1").status_code == 200
    assert client.get("/api/status/j1?wait=0").status_code == 200
    assert read(docs, "j1") is None
    answer = client.get("/api/status/j1")
    assert read(docs, "j1") == answer.get_json()


def test_a_writer_that_starts_afresh_follows_the_files_it_finds(public_app):
    store = public_app.extensions["sidecar"].store
    add_job(store, "j1", "p1", submitted=True)
    docs_of(public_app).write(["j1"])  # by the process elected before
    add_job(store, "j2", "p2", submitted=True)
    docs = docs_of(public_app)  # knows no file
    store.wakeup.follow_all(docs.changed)
    store.finish("j1", JobStatus.CANCELLED)
    assert read(docs, "j1")["status"] == "cancelled"
    store.finish("j2", JobStatus.CANCELLED)
    assert read(docs, "j2") is None  # it never had one: the sidecar answers it


def test_a_failing_write_does_not_fail_the_change_it_follows(public_app, monkeypatch, caplog):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    store.wakeup.follow_all(docs.changed)
    add_job(store, "j1", "p1", submitted=True)

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(docs, "_write_rows", broken)
    polled(docs, store, "j1")  # nor the poll that asks for the file
    assert "status files: writing failed" in caplog.text
    caplog.clear()
    store.set_queue_positions({"p1": 1})
    assert store.get("j1").queue_position == 1
    assert "status files: writing failed" in caplog.text


def test_what_this_processs_writers_say_they_changed_is_held_without_reading_the_row(
    public_app, monkeypatch
):
    monkeypatch.setitem(status_docs.REWRITE_GAP, JobStatus.PROCESSING, 0.5)
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    add_job(store, "j1", "p1", submitted=True)
    store.mark_processing("p1")
    polled(docs, store, "j1")  # while no writer runs
    reads = []
    get_many = store.get_many
    monkeypatch.setattr(store, "get_many", lambda *a, **k: reads.append(a) or get_many(*a, **k))
    with writing(docs):
        # Written by the sweep the writer starts with, which finds what the poll asked for.
        wait_for(lambda: (read(docs, "j1") or {}).get("status") == "processing", 3, 0.01, "start")
        assert len(reads) == 1
        for step in range(1, 6):
            store.record_progress("p1", step, 8, None)  # announced as PROGRESS
        wait_for(
            lambda: (read(docs, "j1") or {}).get("current_step") == 5, 3, 0.01, "the last step"
        )
        assert len(reads) == 2  # one read, when the hold ended
        store.finish("j1", JobStatus.COMPLETED, [IMAGE])  # not a PROGRESS: read at once
        wait_for(
            lambda: (read(docs, "j1") or {}).get("status") == "completed", 0.4, 0.01, "the end"
        )


def test_a_sweep_repairs_what_an_announcement_missed(public_app, monkeypatch):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    add_job(store, "j1", "p1", submitted=True)
    docs.write(["j1"])
    assert read(docs, "j1")["status"] == "queued"
    store.finish("j1", JobStatus.CANCELLED)  # the writer is not running: nobody hears it
    assert read(docs, "j1")["status"] == "queued"
    docs.sweep()
    assert read(docs, "j1")["status"] == "cancelled"
    # A file whose job is not in the store (purged while the writer was off) goes at a full
    # sweep; one that is in step is left alone.
    # Without a file: a job gets one if a plain poll asked for it, and its announcement was
    # lost (the writer was not running), at a sweep or at a full one; else none.
    add_job(store, "waiting", "p2", submitted=True)
    add_job(store, "asked", "p3", submitted=True)
    add_job(store, "asked-too", "p4", submitted=True)
    polled(docs, store, "asked")
    polled(docs, store, "asked-too")
    docs.sweep()
    assert read(docs, "asked")["status"] == "queued"
    store.finish("asked-too", JobStatus.COMPLETED, [IMAGE])
    docs.sweep(full=True)
    assert read(docs, "asked-too")["status"] == "completed"
    assert read(docs, "waiting") is None
    assert sorted(os.listdir(docs.folder)) == ["asked-too.json", "asked.json", "j1.json"]
    docs.path("purged").write_text("{}")
    open(docs._marker("purged-too"), "w").close()
    before = docs.path("j1").stat().st_mtime_ns
    docs.sweep(full=True)
    assert not docs.path("purged").exists()
    assert not os.path.exists(docs._marker("purged-too"))
    assert docs.path("j1").stat().st_mtime_ns == before


def test_a_full_sweep_reads_the_rows_of_the_folders_jobs_only(public_app, monkeypatch):
    # Not every job kept (a month of them, by JOB_RETENTION_DAYS): each full sweep held all
    # their versions at once. The folder is read a chunk at a time.
    monkeypatch.setattr("api.status_docs.FOLDER_CHUNK", 3)
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    for i in range(12):
        add_job(store, f"j{i}", f"p{i}", submitted=True)
    for i in range(7):
        polled(docs, store, f"j{i}")
    docs.write([f"j{i}" for i in range(5)])  # j5 and j6: asked for, and their files lost
    store.finish("j0", JobStatus.COMPLETED, [IMAGE])  # unheard: the writer is not running
    docs.path("gone").write_text("{}")

    def every_job(after):
        raise AssertionError("a full sweep read every job's version")

    asked: list[list[str]] = []
    versions_of = store.versions_of
    monkeypatch.setattr(store, "versions_since", every_job)
    monkeypatch.setattr(store, "versions_of", lambda ids: asked.append(ids) or versions_of(ids))
    docs.sweep(full=True)
    assert max(len(ids) for ids in asked) <= 3
    assert sorted(job_id for ids in asked for job_id in ids) == sorted(
        ["gone", *(f"j{i}" for i in range(7))]
    )
    assert read(docs, "j0")["status"] == "completed"
    assert read(docs, "j5")["status"] == read(docs, "j6")["status"] == "queued"
    assert not docs.path("gone").exists() and read(docs, "j7") is None


def test_a_full_sweep_keeps_a_file_written_while_it_reads_the_rows(public_app):
    # Files are written on announcing threads while the sweeper reads: a file written after its
    # rows were read is of a job that is new, not gone.
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    store.wakeup.follow_all(docs.changed)
    add_job(store, "old", "p1", submitted=True)
    polled(docs, store, "old")
    versions_of = store.versions_of

    def meanwhile(job_ids):
        found = versions_of(job_ids)
        add_job(store, "new", "p9", submitted=True)
        store.set_queue_positions({"p9": 1})
        polled(docs, store, "new")
        return found

    store.versions_of = meanwhile
    docs.sweep(full=True)
    assert read(docs, "new")["queue_position"] == 1
    assert read(docs, "old")["status"] == "queued"


def test_no_file_for_a_status_that_inlines_its_images(public_app):
    store = public_app.extensions["sidecar"].store
    docs = docs_of(public_app)
    add_job(store, "inline", "p1", submitted=True, options={"include_base64": True})
    docs.path("inline").parent.mkdir(parents=True, exist_ok=True)
    docs.path("inline").write_text("{}")
    docs.write(["inline"])
    assert not docs.path("inline").exists()


@pytest.mark.parametrize(
    ("settings", "presigns", "reason"),
    [
        ({"status_docs_dir": ""}, False, "STATUS_DOCS_DIR is not set"),
        ({"api_keys": "k" * 20}, False, "API keys are set"),
        ({"allow_unauthenticated": False}, False, "only this machine"),
        ({"allowed_hosts": "api.example.com"}, False, "ALLOWED_HOSTS is set"),
        ({}, True, "signed per answer"),
    ],
)
def test_no_files_where_the_answer_depends_on_who_asks(
    tmp_path, workflows_dir, settings, presigns, reason
):
    values = {"status_docs_dir": str(tmp_path / "docs"), **PUBLIC, **settings}
    config = make_config(tmp_path, workflows_dir, **values)
    assert reason in status_docs.refusal(config, presigns)
    public = make_config(tmp_path, workflows_dir, status_docs_dir="d", **PUBLIC)
    assert status_docs.refusal(public, False) is None


def test_a_deployment_that_may_not_have_files_empties_the_folder(
    tmp_path, workflows_dir, fake_comfy
):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "left-over.json").write_text('{"status": "processing"}')
    (folder / ".left-over.wanted").write_text("")
    config = make_config(tmp_path, workflows_dir, status_docs_dir=str(folder), api_keys="k" * 20)
    s = create_app(config).extensions["sidecar"]
    docs = StatusDocs(folder, s.store, None, enabled=False)
    docs.run(threading.Event())  # returns at once: nothing to keep
    assert os.listdir(folder) == []
    add_job(s.store, "j1", "p1", submitted=True)
    docs.want(s.store.get("j1"))
    assert os.listdir(folder) == []
