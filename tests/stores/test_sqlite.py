"""What only the embedded store does: its file, its schema versions, its folder."""

import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from api.exceptions import ConfigError
from api.job import JobStatus
from api.sqlite_schema import MIGRATIONS
from api.sqlite_store import PAGE_CACHE_KB, WAKE_FOLDER, SQLiteJobStore
from tests.support.jobs import add_job
from tests.support.sidecar import wait_for


def test_schema_is_versioned_and_wal(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Opening again migrates nothing and keeps the data.
    add_job(store, prompt="prompt")
    assert SQLiteJobStore(tmp_path / "jobs.sqlite3").get("j1").prompt == "prompt"


def test_every_thread_s_connection_keeps_a_small_page_cache(tmp_path):
    # One connection per thread: SQLite's 2 MB default each made every worker grow by ~16 MB.
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    sizes = [store._exec("PRAGMA cache_size").fetchone()[0]]
    other = threading.Thread(
        target=lambda: sizes.append(store._exec("PRAGMA cache_size").fetchone()[0])
    )
    other.start()
    other.join()
    assert sizes == [-PAGE_CACHE_KB, -PAGE_CACHE_KB]


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


def _in_another_process(folder, code: str) -> None:
    """Run `code` with `store` (the same database) in a separate Python process."""
    program = (
        "import sys; from api.sqlite_store import SQLiteJobStore; from api.job import JobStatus;"
        f" store = SQLiteJobStore(sys.argv[1]); {code}"
    )
    subprocess.run([sys.executable, "-c", program, str(folder / "jobs.sqlite3")], check=True)


@pytest.mark.parametrize("depth", [1, 12], ids=["short path", "path longer than sun_path"])
def test_a_change_made_in_another_process_wakes_the_waiter(tmp_path, monkeypatch, depth):
    # Without the wake-up the waiter would read its row only after an hour: it can only have
    # returned because the other process announced the change.
    monkeypatch.setattr(SQLiteJobStore, "recheck_seconds", 3600)
    folder = tmp_path.joinpath(*["a-rather-long-folder-name"] * depth)
    store = SQLiteJobStore(folder / "jobs.sqlite3")
    add_job(store, "j1", "p1", submitted=True)
    version = store.version("j1")[0]
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(store.wait_for_change("j1", version, 60))
    )
    waiter.start()
    sockets = folder / WAKE_FOLDER
    wait_for(lambda: sockets.is_dir() and os.listdir(sockets), 10, message="the waiter's socket")
    _in_another_process(folder, "store.finish('j1', JobStatus.COMPLETED, [])")
    waiter.join(30)
    assert answers == [True]
    assert store.get("j1").status == JobStatus.COMPLETED


def test_the_socket_of_a_process_that_is_gone_is_removed_by_the_next_writer(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    add_job(store, "j1", "p1", submitted=True)
    # A process that waited on a job and exited without cleaning up (SIGKILL, say).
    code = "import os\nwith store.wakeup.subscribe('j1'):\n    os._exit(0)"
    _in_another_process(tmp_path, f"exec({code!r})")
    assert len(os.listdir(tmp_path / WAKE_FOLDER)) == 1
    store.record_progress("p1", 1, 2, None)
    assert os.listdir(tmp_path / WAKE_FOLDER) == []


def test_the_socket_of_a_process_gone_while_nothing_waited_is_removed_by_the_next_to_bind(
    tmp_path,
):
    # Nothing waited there when it died, so no writer sends to it (and finds it gone).
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    _in_another_process(tmp_path, "store.wakeup._listening(); import os; os._exit(0)")
    assert len(os.listdir(tmp_path / WAKE_FOLDER)) == 1
    with store.wakeup.subscribe("j1"):
        assert os.listdir(tmp_path / WAKE_FOLDER) == [store.wakeup._name]
