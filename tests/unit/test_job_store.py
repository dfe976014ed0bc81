"""The SQLite job store."""

import sqlite3

from api.job import JobStatus
from api.sqlite_store import MIGRATIONS, SQLiteJobStore
from tests.support.jobs import add_job


def make(store: SQLiteJobStore, job_id: str = "j1", prompt_id: str = "p1") -> None:
    add_job(store, job_id, prompt_id, prompt="prompt", params={"seed": 2**64 - 1}, graph={"1": {}})


def test_schema_is_versioned_and_wal(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Opening again migrates nothing and keeps the data.
    make(store)
    assert SQLiteJobStore(tmp_path / "jobs.sqlite3").get("j1").prompt == "prompt"


def test_big_seeds_round_trip(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    make(store)
    assert store.get("j1").params["seed"] == 2**64 - 1


def test_finish_is_idempotent_and_final(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    make(store)
    assert store.finish("j1", JobStatus.COMPLETED, [{"filename": "a.png"}]) is True
    assert store.finish("j1", JobStatus.FAILED, error="late") is False
    job = store.get("j1")
    assert job.status == "completed" and job.error is None
    assert store.record_progress("p1", 1, 2, None) is False
    assert store.mark_processing("p1") is False


def test_prompt_ids_are_unique(tmp_path):
    import pytest

    store = SQLiteJobStore(tmp_path / "db")
    make(store, "j1", "p1")
    with pytest.raises(sqlite3.IntegrityError):  # prompt ids are unique
        make(store, "j2", "p1")


def test_unfinished_and_counts(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    make(store, "j1", "p1")
    make(store, "j2", "p2")
    store.finish("j2", JobStatus.CANCELLED)
    assert [j.id for j in store.unfinished()] == ["j1"]
    assert store.count(["queued"]) == 1 and store.count() == 2


def test_client_id_is_chosen_once(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    assert store.setdefault_meta("client_id", "a") == "a"
    assert SQLiteJobStore(tmp_path / "db").setdefault_meta("client_id", "b") == "a"


def test_a_state_dir_the_sidecar_cannot_write_is_a_clear_error(tmp_path):
    import pytest

    from api.exceptions import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"STATE_DIR=.*cannot be written there.*write access"):
        SQLiteJobStore(blocker / "state" / "jobs.sqlite3")


def test_jobs_are_counted_and_paged_per_owner(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    add_job(store, "a1", "pa1", owner="alice")
    add_job(store, "a2", "pa2", owner="alice")
    add_job(store, "b1", "pb1", owner="bob")
    add_job(store, "n1", "pn1")  # made without API keys
    store.finish("a2", JobStatus.FAILED, error="x")
    assert store.count(owner="alice") == 2 and store.count(["queued"], owner="alice") == 1
    page, total = store.page(None, 10, 0, owner="bob")
    assert [j.id for j in page] == ["b1"] and total == 1
    assert store.page(None, 10, 0)[1] == 4
    assert store.get("a1").owner == "alice" and store.get("n1").owner is None


def test_an_idempotency_key_is_unique_per_owner_only(tmp_path):
    import pytest

    from api.exceptions import DuplicateIdempotencyKey

    store = SQLiteJobStore(tmp_path / "db")
    add_job(store, "a1", "pa1", owner="alice", idempotency_key="k")
    add_job(store, "b1", "pb1", owner="bob", idempotency_key="k")
    add_job(store, "n1", "pn1", idempotency_key="k")
    assert store.find_by_idempotency_key("k", "alice").id == "a1"
    assert store.find_by_idempotency_key("k", "bob").id == "b1"
    assert store.find_by_idempotency_key("k").id == "n1"
    assert store.find_by_idempotency_key("k", "carol") is None
    for owner in ("alice", None):
        with pytest.raises(DuplicateIdempotencyKey):
            add_job(store, f"twin-{owner}", f"pt-{owner}", owner=owner, idempotency_key="k")


def test_a_completed_jobs_output_files_are_its_owners(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    add_job(store, "a1", "pa1", owner="alice")
    add_job(store, "b1", "pb1", owner="bob")
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


def test_a_database_from_before_owners_is_upgraded_in_place(tmp_path):
    path = tmp_path / "db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (id, prompt_id, client_id, workflow, prompt, params, notes, graph,"
        " status, created_at, updated_at, idempotency_key) VALUES ('old', 'p-old', 'c', 'wf',"
        " 'p', '{}', '{}', '{}', 'queued', 1, 1, 'k')"
    )
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    store = SQLiteJobStore(path)
    old = store.get("old")
    assert old.owner is None and store.find_by_idempotency_key("k").id == "old"
