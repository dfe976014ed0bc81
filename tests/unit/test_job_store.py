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
