"""What only the embedded store does: its file, its schema versions, its folder."""

import sqlite3

import pytest

from api.exceptions import ConfigError
from api.sqlite_schema import MIGRATIONS
from api.sqlite_store import SQLiteJobStore
from tests.support.jobs import add_job


def test_schema_is_versioned_and_wal(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Opening again migrates nothing and keeps the data.
    add_job(store, prompt="prompt")
    assert SQLiteJobStore(tmp_path / "jobs.sqlite3").get("j1").prompt == "prompt"


def test_prompt_ids_are_unique(tmp_path):
    store = SQLiteJobStore(tmp_path / "db")
    add_job(store, "j1", "p1")
    with pytest.raises(sqlite3.IntegrityError):
        add_job(store, "j2", "p1")


def test_a_state_dir_the_sidecar_cannot_write_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"STATE_DIR=.*cannot be written there.*write access"):
        SQLiteJobStore(blocker / "state" / "jobs.sqlite3")


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
