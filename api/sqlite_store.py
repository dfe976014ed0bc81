"""The embedded job store: one SQLite row per job, in WAL mode, on the shared volume.

Nothing about a job lives only in process memory: every gunicorn worker reads and writes the
same database file, and a restarted sidecar picks up exactly where the last one stopped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.delivery import (
    PROGRESS_EVENT,
    NewDelivery,
)
from api.exceptions import ConfigError, DuplicateIdempotencyKey
from api.job import FINISHED, UNFINISHED, Job, JobStatus, output_files
from api.jobstore import JobStore
from api.sqlite_outbox import OutboxQueries
from api.sqlite_schema import MIGRATIONS
from api.wakeup import FALLBACK_SECONDS, PLACE, PROGRESS, Wakeup

JSON_COLUMNS = ("params", "notes", "graph", "outputs", "error_details", "options", "objects")
# Most of an unfinished job's JSON columns are empty: made, not parsed (a pass reads every
# unfinished row, a hundred and more with a long queue).
EMPTY_JSON = {"{}": dict, "[]": list}
# Columns written by create(), in order.
INSERTED = (
    "id",
    "prompt_id",
    "client_id",
    "workflow",
    "prompt",
    "params",
    "notes",
    "graph",
    "status",
    "total_steps",
    "created_at",
    "updated_at",
    "options",
    "deadline",
    "idempotency_key",
    "request_hash",
    "owner",
)
NEWEST_BY = ("created_at", "finished_at")
# Beside the database: the sockets of the processes that wait on jobs (api/wakeup.py).
WAKE_FOLDER = "wake"


def _job(row: sqlite3.Row | None, graph: bool = True) -> Job | None:
    return None if row is None else _jobs([row], graph)[0]


def _jobs(rows: list[sqlite3.Row], graph: bool = True) -> list[Job]:
    """Jobs from rows of one query: their column names read once (dict(row) asks the row for
    each, about four times slower, in a pass that reads every unfinished row)."""
    names = rows[0].keys() if rows else []
    return [_decoded(dict(zip(names, row, strict=True)), graph) for row in rows]


def _decoded(values: dict, graph: bool) -> Job:
    if not graph:
        values["graph"] = {}  # not read (SQLiteJobStore._columns)
    for column in JSON_COLUMNS:
        text = values.get(column)
        if text is not None and (graph or column != "graph"):
            empty = EMPTY_JSON.get(text)
            values[column] = empty() if empty is not None else json.loads(text)
    return Job.from_row(values)


def _use_wal(conn: sqlite3.Connection) -> None:
    """WAL mode, which the database file keeps once set. Switching a new database needs it to
    itself, and SQLite answers "database is locked" at once, without waiting, when another
    process opens it at that moment, as the workers of a first start do (one that failed to
    boot on it halted the whole server): tried again until WAL_SWITCH_SECONDS."""
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY)


def _marks(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)


def _where(statuses: Iterable[str] | None, owner: str | None) -> tuple[str, list]:
    """A WHERE clause (or "") and its arguments for a status list and an owner."""
    clauses, args = [], []
    if statuses is not None:
        statuses = list(statuses)
        clauses.append(f"status IN ({_marks(statuses)})")
        args += statuses
    if owner is not None:
        clauses.append("owner = ?")
        args.append(owner)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def check_location(path: Path) -> None:
    """ConfigError, saying what to do, when the database's folder cannot be made or written."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"STATE_DIR={folder}: the job database cannot be written there"
            f" ({exc.strerror or exc}); give the sidecar's user (uid {os.getuid()}) write access"
            " or point STATE_DIR somewhere it has it"
        ) from None


# Each connection's own page cache (SQLite's default is 2,000 KB).
PAGE_CACHE_KB = 256
# How long a connection tries to put a new database in WAL mode while others open it (seconds),
# and how long it lets them between two tries.
WAL_SWITCH_SECONDS = 10.0
WAL_SWITCH_RETRY = 0.005


class SQLiteJobStore(OutboxQueries, JobStore):
    """SQLite access with one connection per thread (sqlite3 connections are not shareable)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        check_location(self.path)
        self._local = threading.local()
        # Writers announce each change to a job here; waiters in any process are woken by it.
        self.wakeup = Wakeup(self.path.parent / WAKE_FOLDER)
        self.migrate()
        # Every column but the graph (the largest: reading it costs pages, not only decoding).
        columns = [row[1] for row in self._exec("PRAGMA table_info(jobs)") if row[1] != "graph"]
        self._without_graph = ", ".join(columns)
        self._state_columns = ", ".join(c for c in columns if c not in JSON_COLUMNS)

    def _columns(self, graph: bool) -> str:
        return "*" if graph else self._without_graph

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.row_factory = sqlite3.Row
            _use_wal(conn)
            # NORMAL in WAL mode survives a crash of the process; only power loss can drop the
            # last commits, which the tracker then re-derives from ComfyUI.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            # A connection per thread (16 per worker) each caching up to 2 MB of pages by
            # default made a worker grow by ~16 MB under reads; the kernel's page cache, which
            # all of them share, holds the file anyway.
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KB}")
            self._local.conn = conn
        return conn

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns it."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(MIGRATIONS)

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, tuple(args))

    @contextmanager
    def _transaction(self):
        """One write transaction, taken at once (BEGIN IMMEDIATE: no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self.wakeup.close()

    # --- creating and finding -------------------------------------------------------------

    def create(self, job: Job) -> None:
        values = {
            "id": job.id,
            "prompt_id": job.prompt_id,
            "client_id": job.client_id,
            "workflow": job.workflow,
            "prompt": job.prompt,
            "params": json.dumps(job.params),
            "notes": json.dumps(job.notes),
            "graph": json.dumps(job.graph, separators=(",", ":")),
            "status": JobStatus.QUEUED.value,
            "total_steps": job.total_steps,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "options": json.dumps(job.options),
            "deadline": job.deadline,
            "idempotency_key": job.idempotency_key,
            "request_hash": job.request_hash,
            "owner": job.owner,
        }
        try:
            self._exec(
                f"INSERT INTO jobs ({', '.join(INSERTED)}) VALUES ({_marks(INSERTED)})",
                [values[column] for column in INSERTED],
            )
        except sqlite3.IntegrityError as exc:
            # "UNIQUE constraint failed: index 'jobs_idempotency'": a concurrent twin won.
            if "jobs_idempotency" in str(exc):
                raise DuplicateIdempotencyKey(job.idempotency_key) from None
            raise

    def get(self, job_id: str) -> Job | None:
        return _job(self._exec("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def find_by_prompt(self, prompt_id: str) -> Job | None:
        return _job(self._exec("SELECT * FROM jobs WHERE prompt_id = ?", (prompt_id,)).fetchone())

    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> Job | None:
        return _job(
            self._exec(
                "SELECT * FROM jobs WHERE COALESCE(owner, '') = ? AND idempotency_key = ?",
                (owner or "", key),
            ).fetchone()
        )

    def discard(self, job_id: str) -> None:
        self._exec("DELETE FROM jobs WHERE id = ?", (job_id,))
        self.wakeup.announce(job_id)

    # --- the job's life ---------------------------------------------------------------------

    def mark_submitted(
        self,
        job_id: str,
        prompt_id: str,
        planned: str | None = None,
        number: float | None = None,
    ) -> bool:
        now = time.time()
        fence = "" if planned is None else " AND prompt_id = ?"
        cur = self._exec(
            "UPDATE jobs SET prompt_id = ?, queue_number = ?, submitted_at = ?, updated_at = ?"
            f" WHERE id = ?{fence}",
            (prompt_id, number, now, now, job_id, *([] if planned is None else [planned])),
        )
        if cur.rowcount > 0:
            self.wakeup.announce(job_id)
        return cur.rowcount > 0

    def mark_resubmitted(self, job_id: str, prompt_id: str, number: float | None = None) -> None:
        now = time.time()
        self._exec(
            "UPDATE jobs SET prompt_id = ?, queue_number = ?, submitted_at = ?,"
            " attempts = attempts + 1, queue_position = NULL, status = ?, updated_at = ?"
            " WHERE id = ? AND status IN (?, ?)",
            (prompt_id, number, now, JobStatus.QUEUED, now, job_id, *UNFINISHED),
        )
        self.wakeup.announce(job_id)

    def mark_processing(self, prompt_id: str, node: str | None = None) -> bool:
        now = time.time()
        changed = self._exec(
            "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?),"
            " current_node = COALESCE(?, current_node), queue_position = 0, updated_at = ?"
            " WHERE prompt_id = ? AND status IN (?, ?) RETURNING id",
            (JobStatus.PROCESSING, now, node, now, prompt_id, *UNFINISHED),
        ).fetchall()
        return self._announce(changed, PROGRESS)

    def record_progress(self, prompt_id: str, value: int, maximum: int, node: str | None) -> bool:
        if maximum <= 0:
            return False
        now = time.time()
        fraction = min(max(value / maximum, 0.0), 1.0)
        changed = self._exec(
            "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?),"
            " progress = MAX(progress, ?), current_step = ?, total_steps = ?,"
            " current_node = COALESCE(?, current_node), updated_at = ?"
            " WHERE prompt_id = ? AND status IN (?, ?) RETURNING id",
            (
                JobStatus.PROCESSING,
                now,
                fraction,
                value,
                maximum,
                node,
                now,
                prompt_id,
                *UNFINISHED,
            ),
        ).fetchall()
        return self._announce(changed, PROGRESS)

    def _announce(self, rows: list, change: str | None = None) -> bool:
        """Wake the waiters of the jobs an UPDATE ... RETURNING id changed; whether it did."""
        if rows:
            self.wakeup.announce_all([row[0] for row in rows], change)
        return bool(rows)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        outputs: list[dict] | None = None,
        error: str | None = None,
        error_details: Any = None,
        deliveries: Sequence[NewDelivery] = (),
        prompt_id: str | None = None,
        unclaimed: bool = False,
        node: str | None = None,
        ran_for: float | None = None,
    ) -> Job | None:
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a final status")
        progress_sql = ", progress = 1.0" if status == JobStatus.COMPLETED else ""
        started_sql = (
            "" if ran_for is None else ", started_at = COALESCE(started_at, MAX(created_at, ?))"
        )
        # One node holds every job of an embedded store: `unclaimed` changes nothing here.
        fence = "" if prompt_id is None else " AND prompt_id = ?"
        with self._transaction() as conn:
            # Its time read once the write lock is held: a start written meanwhile (the socket's
            # thread, as a reconciliation pass settles the run) is never after the end.
            now = time.time()
            started = [] if ran_for is None else [now - max(ran_for, 0.0)]
            cur = conn.execute(
                f"UPDATE jobs SET status = ?, outputs = ?, error = ?, error_details = ?,"
                f" finished_at = ?, updated_at = ?, queue_position = NULL{progress_sql},"
                f" current_node = COALESCE(?, current_node){started_sql}"
                f" WHERE id = ? AND status IN (?, ?){fence} RETURNING {self._without_graph}",
                (
                    status,
                    json.dumps(outputs or []),
                    error,
                    None if error_details is None else json.dumps(error_details),
                    now,
                    now,
                    node,
                    *started,
                    job_id,
                    *UNFINISHED,
                    *([] if prompt_id is None else [prompt_id]),
                ),
            )
            done = _job(cur.fetchone(), graph=False)
            if done is None:
                return None
            # In the same transaction: a finished job's files are its owner's at once.
            conn.executemany(
                "INSERT OR IGNORE INTO job_files (name, job_id) VALUES (?, ?)",
                [(name, job_id) for name in output_files(outputs or [])],
            )
            # A progress event still waiting is older news than the end.
            self._supersede(conn, job_id, PROGRESS_EVENT, None, now)
            self._insert_deliveries(conn, job_id, deliveries, now)
        self.wakeup.announce(job_id)
        return done

    def set_queue_positions(self, positions: dict[str, int | None]) -> None:
        if not positions:
            return
        # One statement for every place (they all move at each run's end): 1.1 ms for a
        # hundred, against 2.4 for a statement each. The unary + keeps SQLite off the status
        # index, which made it compare every unfinished row with every place; each place
        # then finds its row by the prompt_id index.
        changed = self._exec(
            "UPDATE jobs SET queue_position = p.value, updated_at = ? FROM json_each(?) AS p"
            " WHERE jobs.prompt_id = p.key AND +jobs.status IN (?, ?)"
            " AND jobs.queue_position IS NOT p.value RETURNING id",
            (time.time(), json.dumps(positions), *UNFINISHED),
        ).fetchall()
        self._announce(changed, PLACE)

    def add_file(self, job_id: str, name: str) -> None:
        self._exec("INSERT OR IGNORE INTO job_files (name, job_id) VALUES (?, ?)", (name, job_id))

    def owns_file(self, owner: str, name: str) -> bool:
        row = self._exec(
            "SELECT 1 FROM job_files f JOIN jobs j ON j.id = f.job_id"
            " WHERE f.name = ? AND j.owner = ? LIMIT 1",
            (name, owner),
        ).fetchone()
        return row is not None

    def files_of(self, owner: str) -> set[str]:
        rows = self._exec(
            "SELECT DISTINCT f.name FROM job_files f JOIN jobs j ON j.id = f.job_id"
            " WHERE j.owner = ?",
            (owner,),
        ).fetchall()
        return {row[0] for row in rows}

    def record_option(self, job_id: str, key: str, value: Any) -> None:
        self._exec(
            "UPDATE jobs SET options = json_set(options, ?, json(?)), updated_at = ? WHERE id = ?",
            (f"$.{key}", json.dumps(value), time.time(), job_id),
        )
        self.wakeup.announce(job_id)

    # --- reading many -----------------------------------------------------------------------

    def unfinished(self, node: str | None = None, graph: bool = True) -> list[Job]:
        return self._unfinished(self._columns(graph), graph)

    def unfinished_states(self, node: str | None = None) -> list[Job]:
        return self._unfinished(self._state_columns, graph=False)

    def _unfinished(self, columns: str, graph: bool) -> list[Job]:
        # One node holds every job of an embedded store.
        rows = self._exec(
            f"SELECT {columns} FROM jobs WHERE status IN (?, ?) ORDER BY created_at", UNFINISHED
        ).fetchall()
        return _jobs(rows, graph)

    def page(
        self,
        statuses: Iterable[str] | None,
        limit: int,
        offset: int,
        newest_by: str = "created_at",
        owner: str | None = None,
    ) -> tuple[list[Job], int]:
        if newest_by not in NEWEST_BY:
            raise ValueError(f"newest_by must be one of {NEWEST_BY}")
        where, args = _where(statuses, owner)
        rows = self._exec(
            f"SELECT * FROM jobs {where} ORDER BY {newest_by} DESC, rowid DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        total = self._exec(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        return _jobs(rows), total

    def count(self, statuses: Iterable[str] | None = None, owner: str | None = None) -> int:
        where, args = _where(statuses, owner)
        return self._exec(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]

    def counts(self, statuses: Iterable[str] | None = None) -> dict[str, int]:
        statuses = list(JobStatus if statuses is None else statuses)
        where, args = _where(None if len(statuses) == len(JobStatus) else statuses, None)
        found = dict(self._exec(f"SELECT status, COUNT(*) FROM jobs {where} GROUP BY status", args))
        return {str(status): found.get(status, 0) for status in statuses}

    def version(self, job_id: str) -> tuple[float, str] | None:
        row = self._exec("SELECT updated_at, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def versions_since(self, after: float) -> dict[str, tuple[float, str]]:
        rows = self._exec(
            "SELECT id, updated_at, status FROM jobs WHERE status IN (?, ?) OR updated_at > ?",
            (*UNFINISHED, after),
        )
        return {row[0]: (row[1], row[2]) for row in rows.fetchall()}

    def versions_of(self, job_ids: Sequence[str]) -> dict[str, tuple[float, str]]:
        return {row[0]: (row[1], row[2]) for row in self._by_id("id, updated_at, status", job_ids)}

    recheck_seconds = FALLBACK_SECONDS

    def watch(self, job_id: str):
        # The tracker writes in another process, and announces each change (api/wakeup.py).
        return self.wakeup.subscribe(job_id)

    def _wake_every_waiter(self) -> None:
        self.wakeup.subscribers.wake_waiters(None)

    def now(self) -> float:
        return time.time()

    def last_created_at(self) -> float | None:
        return self._exec("SELECT MAX(created_at) FROM jobs").fetchone()[0]

    def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        rows = self._exec(
            "SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?"
            " ORDER BY finished_at LIMIT ?",
            (finished_before, limit),
        ).fetchall()
        if rows:
            ids = [r["id"] for r in rows]
            with self._transaction() as conn:
                conn.execute(f"DELETE FROM jobs WHERE id IN ({_marks(ids)})", ids)
                conn.execute(f"DELETE FROM deliveries WHERE job_id IN ({_marks(ids)})", ids)
                conn.execute(f"DELETE FROM job_files WHERE job_id IN ({_marks(ids)})", ids)
        return _jobs(rows)

    def get_many(self, job_ids: Sequence[str], graph: bool = True) -> list[Job]:
        found = {job.id: job for job in _jobs(self._by_id(self._columns(graph), job_ids), graph)}
        return [found[job_id] for job_id in job_ids if job_id in found]

    def _by_id(self, columns: str, job_ids: Sequence[str]) -> list[sqlite3.Row]:
        """These columns of the jobs with these ids that exist, in no particular order."""
        rows: list[sqlite3.Row] = []
        ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            sql = f"SELECT {columns} FROM jobs WHERE id IN ({_marks(chunk)})"
            rows += self._exec(sql, chunk).fetchall()
        return rows

    def last_activity(self) -> float | None:
        # Each part an index's edge (created_at, finished_at; status for the starts): the one
        # statement over three columns read every row, 34-61 ms with 100,000 jobs, after each
        # reconciliation pass of an idle sidecar with IDLE_UNLOAD_MINUTES set.
        return self._exec(
            "SELECT MAX((SELECT MAX(created_at) FROM jobs),"
            " COALESCE((SELECT MAX(finished_at) FROM jobs), 0),"
            " COALESCE((SELECT MAX(started_at) FROM jobs WHERE status IN (?, ?)), 0))",
            UNFINISHED,
        ).fetchone()[0]

    # --- small facts shared between processes ---------------------------------------------

    def put_meta(self, key: str, value: Any) -> None:
        self._exec(
            "INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, json.dumps(value), time.time()),
        )

    def setdefault_meta(self, key: str, value: Any) -> Any:
        self._exec(
            "INSERT OR IGNORE INTO meta (key, value, updated_at) VALUES (?, ?, ?)",
            (key, json.dumps(value), time.time()),
        )
        return self.get_meta(key)[0]

    def get_meta(self, key: str) -> tuple[Any, float] | None:
        row = self._exec("SELECT value, updated_at FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])
