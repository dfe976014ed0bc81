"""The durable job store: one SQLite row per job, in WAL mode, on the shared volume.

Nothing about a job lives only in process memory: every gunicorn worker reads and writes the
same database, and a restarted sidecar picks up exactly where the last one stopped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from api.outputs import relative_name


class JobStatus(StrEnum):
    """Status words of the primary API, exactly."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobStatus.QUEUED, JobStatus.PROCESSING)
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a shipped one.
# Statements are split on ";", so comments inside them must not contain one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY,
        prompt_id     TEXT UNIQUE,
        client_id     TEXT NOT NULL,
        workflow      TEXT NOT NULL,
        prompt        TEXT NOT NULL,
        params        TEXT NOT NULL,     -- JSON: every parameter value used, seed included
        notes         TEXT NOT NULL,     -- JSON: request fields the workflow could not honour
        graph         TEXT NOT NULL,     -- JSON: the exact graph sent to ComfyUI
        status        TEXT NOT NULL,
        progress      REAL NOT NULL DEFAULT 0,
        current_step  INTEGER,
        total_steps   INTEGER,
        current_node  TEXT,
        outputs       TEXT NOT NULL DEFAULT '[]',  -- JSON: every image of every output node
        error         TEXT,
        error_details TEXT,              -- JSON: ComfyUI's own error payload
        created_at    REAL NOT NULL,
        submitted_at  REAL,
        started_at    REAL,
        finished_at   REAL,
        updated_at    REAL NOT NULL
    );
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    """,
    """
    -- JSON: request options that are not workflow parameters (save_to_disk, include_base64...)
    ALTER TABLE jobs ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
    """,
    """
    -- 0 = running in ComfyUI, 1.. = place among ComfyUI's pending prompts (kept by the tracker)
    ALTER TABLE jobs ADD COLUMN queue_position INTEGER;
    """,
    """
    ALTER TABLE jobs ADD COLUMN deadline REAL;
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    ALTER TABLE jobs ADD COLUMN request_hash TEXT;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key);
    CREATE INDEX jobs_finished ON jobs (finished_at);
    """,
)

JSON_COLUMNS = ("params", "notes", "graph", "outputs", "error_details", "options")


def _row(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    job = dict(row)
    for column in JSON_COLUMNS:
        if job.get(column) is not None:
            job[column] = json.loads(job[column])
    return job


class JobStore:
    """SQLite access with one connection per thread (sqlite3 connections are not shareable)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process; only power loss can drop the
            # last commits, which the tracker then re-derives from ComfyUI.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
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

    # --- writes -----------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        client_id: str,
        workflow: str,
        prompt: str,
        params: dict,
        notes: dict,
        graph: dict,
        prompt_id: str | None = None,
        options: dict | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> dict:
        """Insert a queued job. Raises sqlite3.IntegrityError if the idempotency key is taken."""
        now = time.time()
        self._exec(
            "INSERT INTO jobs (id, prompt_id, client_id, workflow, prompt, params, notes, graph,"
            " status, created_at, updated_at, options, deadline, idempotency_key, request_hash)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job_id,
                prompt_id,
                client_id,
                workflow,
                prompt,
                json.dumps(params),
                json.dumps(notes),
                json.dumps(graph, separators=(",", ":")),
                JobStatus.QUEUED,
                now,
                now,
                json.dumps(options or {}),
                deadline,
                idempotency_key,
                request_hash,
            ),
        )
        return self.get(job_id)

    def mark_submitted(self, job_id: str, prompt_id: str) -> None:
        now = time.time()
        self._exec(
            "UPDATE jobs SET prompt_id = ?, submitted_at = ?, updated_at = ? WHERE id = ?",
            (prompt_id, now, now, job_id),
        )

    def resubmitted(self, job_id: str, prompt_id: str) -> None:
        """ComfyUI lost a job that had not started, and it was queued again."""
        now = time.time()
        self._exec(
            "UPDATE jobs SET prompt_id = ?, submitted_at = ?, attempts = attempts + 1,"
            " queue_position = NULL, status = ?, updated_at = ? WHERE id = ?",
            (prompt_id, now, JobStatus.QUEUED, now, job_id),
        )

    def delete(self, job_id: str) -> None:
        self._exec("DELETE FROM jobs WHERE id = ?", (job_id,))

    def mark_processing(self, prompt_id: str, node: str | None = None) -> bool:
        now = time.time()
        cur = self._exec(
            "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?),"
            " current_node = COALESCE(?, current_node), updated_at = ?"
            " WHERE prompt_id = ? AND status IN (?, ?)",
            (JobStatus.PROCESSING, now, node, now, prompt_id, *UNFINISHED),
        )
        return cur.rowcount > 0

    def record_progress(self, prompt_id: str, value: int, maximum: int, node: str | None) -> bool:
        """Store a progress event; job-level progress never goes backwards."""
        if maximum <= 0:
            return False
        now = time.time()
        fraction = min(max(value / maximum, 0.0), 1.0)
        cur = self._exec(
            "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?),"
            " progress = MAX(progress, ?), current_step = ?, total_steps = ?,"
            " current_node = COALESCE(?, current_node), updated_at = ?"
            " WHERE prompt_id = ? AND status IN (?, ?)",
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
        )
        return cur.rowcount > 0

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        outputs: list[dict] | None = None,
        error: str | None = None,
        error_details: Any = None,
    ) -> bool:
        """Move an unfinished job to a final state; False if it already was final (idempotent)."""
        assert status in FINISHED
        now = time.time()
        progress_sql = ", progress = 1.0" if status == JobStatus.COMPLETED else ""
        cur = self._exec(
            f"UPDATE jobs SET status = ?, outputs = ?, error = ?, error_details = ?,"
            f" finished_at = ?, updated_at = ?, queue_position = NULL{progress_sql}"
            f" WHERE id = ? AND status IN (?, ?)",
            (
                status,
                json.dumps(outputs or []),
                error,
                None if error_details is None else json.dumps(error_details),
                now,
                now,
                job_id,
                *UNFINISHED,
            ),
        )
        return cur.rowcount > 0

    # --- reads ------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        return _row(self._exec("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def by_idempotency_key(self, key: str) -> dict | None:
        return _row(self._exec("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone())

    def purge(self, finished_before: float, limit: int = 500) -> list[dict]:
        """Delete finished jobs older than a time; returns the deleted rows (for their files)."""
        rows = self._exec(
            "SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?"
            " ORDER BY finished_at LIMIT ?",
            (finished_before, limit),
        ).fetchall()
        if rows:
            ids = [r["id"] for r in rows]
            self._exec(f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids)
        return [_row(r) for r in rows]

    def by_prompt_id(self, prompt_id: str) -> dict | None:
        return _row(self._exec("SELECT * FROM jobs WHERE prompt_id = ?", (prompt_id,)).fetchone())

    def unfinished(self) -> list[dict]:
        rows = self._exec(
            "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at", UNFINISHED
        ).fetchall()
        return [_row(r) for r in rows]

    def page(
        self,
        statuses: Iterable[str] | None,
        limit: int,
        offset: int,
        newest_by: str = "created_at",
    ) -> tuple[list[dict], int]:
        """One page of jobs (newest first by `newest_by`) and the total that match."""
        assert newest_by in ("created_at", "finished_at")
        where, args = "", []
        if statuses is not None:
            statuses = list(statuses)
            where = f"WHERE status IN ({','.join('?' * len(statuses))})"
            args = statuses
        rows = self._exec(
            f"SELECT * FROM jobs {where} ORDER BY {newest_by} DESC, rowid DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        total = self._exec(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        return [_row(r) for r in rows], total

    def set_queue_positions(self, positions: dict[str, int | None]) -> None:
        """Store each unfinished job's place in ComfyUI's queue (by prompt_id); a row changes
        (and its watchers wake) only if its position did."""
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for prompt_id, position in positions.items():
                conn.execute(
                    "UPDATE jobs SET queue_position = ?, updated_at = ?"
                    " WHERE prompt_id = ? AND status IN (?, ?) AND queue_position IS NOT ?",
                    (position, now, prompt_id, *UNFINISHED, position),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def version(self, job_id: str) -> tuple[float, str] | None:
        """(updated_at, status) of a job: a cheap check for whether it changed."""
        row = self._exec("SELECT updated_at, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def last_created_at(self) -> float | None:
        return self._exec("SELECT MAX(created_at) FROM jobs").fetchone()[0]

    def set_option(self, job_id: str, key: str, value: Any) -> None:
        """Record one fact about a job's result in its options (e.g. where it was saved)."""
        self._exec(
            "UPDATE jobs SET options = json_set(options, ?, json(?)), updated_at = ? WHERE id = ?",
            (f"$.{key}", json.dumps(value), time.time(), job_id),
        )

    def count(self, statuses: Iterable[str] | None = None) -> int:
        if statuses is None:
            return self._exec("SELECT COUNT(*) FROM jobs").fetchone()[0]
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        return self._exec(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses
        ).fetchone()[0]

    # --- small key/value facts shared between processes (tracker heartbeat) ------------------

    def put_meta(self, key: str, value: Any) -> None:
        self._exec(
            "INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, json.dumps(value), time.time()),
        )

    def setdefault_meta(self, key: str, value: Any) -> Any:
        """Store value under key unless one is there already; return the stored value."""
        self._exec(
            "INSERT OR IGNORE INTO meta (key, value, updated_at) VALUES (?, ?, ?)",
            (key, json.dumps(value), time.time()),
        )
        return self.get_meta(key)[0]

    def get_meta(self, key: str) -> tuple[Any, float] | None:
        row = self._exec("SELECT value, updated_at FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# The fields of GET /api/status/<job_id> that the primary API defined (scripts rely on them).
CONTRACT_FIELDS = (
    "job_id",
    "status",
    "prompt",
    "progress",
    "current_step",
    "total_steps",
    "output_image",
    "error",
    "created_at",
)


def public(job: dict, image_url) -> dict:
    """A job as GET /api/status/<job_id> shows it: the primary API's fields, then extras.

    `image_url(image)` builds the URL of one output image.
    """
    images = [
        {**image, "name": relative_name(image), "url": image_url(image)} for image in job["outputs"]
    ]
    saved = [image for image in images if image["type"] == "output"] or images
    first = saved[0] if saved else None
    shown = {
        "job_id": job["id"],
        "status": job["status"],
        "prompt": job["prompt"],
        "progress": round(job["progress"], 4),
        "current_step": job["current_step"],
        "total_steps": job["total_steps"],
        "output_image": first["name"] if first else None,
        "error": job["error"],
        "created_at": iso(job["created_at"]),
        "prompt_id": job["prompt_id"],
        "workflow": job["workflow"],
        "seed": job["params"].get("seed"),
        "parameters": job["params"],
        "ignored_fields": job["notes"],
        "current_node": job["current_node"],
        "image_url": first["url"] if first else None,
        "images": images,
        "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
        "error_details": _brief_error(job["error_details"]),
        "options": job["options"],
        "queue_position": job["queue_position"],
        "version": job["updated_at"],
        "deadline": iso(job["deadline"]),
        "attempts": job["attempts"],
    }
    # Raw-graph jobs (POST /api/workflows/execute) also return what the client sent with them.
    options = job.get("options") or {}
    for key in ("priority", "metadata", "timeout_minutes"):
        if key in options:
            shown[key] = options[key]
    return shown


def summary(job: dict, image_url) -> dict:
    """A job in listings: the status fields without parameters and image details."""
    full = public(job, image_url)
    keep = (
        "job_id",
        "status",
        "prompt",
        "progress",
        "output_image",
        "error",
        "created_at",
        "finished_at",
        "prompt_id",
        "workflow",
        "image_url",
    )
    return {k: full[k] for k in keep}


def _brief_error(details: dict | None) -> dict | None:
    """ComfyUI's error payload without the bulky parts (tensor dumps, tracebacks)."""
    if not details:
        return None
    keep = ("node_id", "node_type", "exception_type", "exception_message", "executed")
    return {k: details[k] for k in keep if k in details} or None
