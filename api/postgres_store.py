"""The shared job store of a cluster: PostgreSQL, one row per job, read and written by every node.

JOB_STORE_URL=postgresql://... selects it. Every sidecar (one per ComfyUI) uses the same
database: any node accepts a job and answers for any job, a node claims queued jobs when its
ComfyUI has room, and holds each claimed job under a lease it renews by heartbeat.

Rules that make that safe (docs/scaling.md has the whole story):
- time comes from the database (`now()`), never from a node's clock: creation, deadlines,
  leases and heartbeats are all compared on one clock;
- a claimed job's prompt_id is its fencing token: every write a node makes about the run it
  owns names that prompt_id, and a job taken back from a node (lease lapsed) gets a new one, so
  the old owner's late writes change nothing (they report 0 rows, and the node stops);
- claims are serialised per node (an advisory lock), so a node never holds more than
  COMFYUI_MAX_PENDING jobs, and `FOR UPDATE SKIP LOCKED` lets nodes claim side by side;
- every change to a job sends NOTIFY sidecar_jobs with its id (delivered at commit), which
  wakes long polls, event streams and sockets on every node at once; a node that lost its
  listening connection re-reads what it waits for.
Connections come from a pool opened in each process after gunicorn forks (a pool inherited
across fork() would share sockets between processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from api.delivery import PROGRESS_EVENT, NewDelivery
from api.exceptions import DuplicateIdempotencyKey, StoreUnavailable
from api.job import FINISHED, Job, JobStatus, output_files
from api.jobstore import JobStore
from api.postgres_fleet import SQL_HELD, SQL_UNFINISHED, FleetQueries, lock_claims
from api.postgres_listener import NOW, ROOM_CHANNEL, STATUSES, Listener, Waking, notify_sql
from api.postgres_outbox import OutboxQueries, adding, delivery_columns, superseding
from api.postgres_schema import migrate

log = logging.getLogger(__name__)


JSON_COLUMNS = ("params", "notes", "graph", "outputs", "error_details", "options", "objects")


def decode(row: dict | None, graph: bool = True) -> Job | None:
    """A job from a row of the jobs table (its JSON columns are text, decoded here; without
    `graph`, the graph is left out)."""
    if row is None:
        return None
    if not graph:
        row["graph"] = {}
    for column in JSON_COLUMNS:
        if row.get(column) is not None and (graph or column != "graph"):
            row[column] = json.loads(row[column])
    return Job.from_row(row)


def _where(statuses: Iterable[str] | None, owner: str | None) -> tuple[str, list]:
    """A WHERE clause (or "") and its arguments for a status list and an owner."""
    clauses, args = [], []
    if statuses is not None:
        # Written out (status words only: nothing else matches any row), so that the planner
        # sees which statuses: the unfinished ones have an index of their own.
        words = sorted({str(status) for status in statuses} & STATUSES)
        clauses.append(f"status IN ({', '.join(map(repr, words))})" if words else "false")
    if owner is not None:
        clauses.append("owner = %s")
        args.append(owner)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _check(conn: psycopg.Connection) -> None:
    """The pool's check of a connection it hands out, without a round trip when it can.

    A connection the server closed (a restart, a terminated backend, an idle timeout) has
    something to read: the server's last message, or the end of the stream. Only then does it
    get the pool's own check (an empty query), which finds it broken, so the pool opens a new
    one. An idle connection with nothing to read is handed out as it is: that query would
    otherwise double the round trips of every statement."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def inserting(job: Job) -> tuple[str, str, tuple]:
    """(columns, value expressions, arguments) of a new job's row, queued."""
    # The database's clock: the deadline keeps the length the request asked for.
    timeout = None if job.deadline is None else job.deadline - job.created_at
    columns = (
        "id, prompt_id, client_id, workflow, prompt, params, notes, graph, status, total_steps,"
        " created_at, updated_at, options, deadline, idempotency_key, request_hash, priority,"
        " owner, pinned_node"
    )
    values = (
        f"%s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s, {NOW}, {NOW}, %s, {NOW} + %s, %s, %s,"
        " %s, %s, %s"
    )
    args = (
        job.id,
        job.prompt_id,
        job.client_id,
        job.workflow,
        job.prompt,
        json.dumps(job.params),
        json.dumps(job.notes),
        json.dumps(job.graph, separators=(",", ":")),
        job.total_steps,
        json.dumps(job.options),
        timeout,
        job.idempotency_key,
        job.request_hash,
        1 if job.options.get("priority") == "high" else 0,
        job.owner,
        job.pinned_node,
    )
    return columns, values, args


@contextlib.contextmanager
def duplicate_key(job: Job) -> Iterator[None]:
    """A second job under the same owner and Idempotency-Key: DuplicateIdempotencyKey."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        if "jobs_idempotency" in str(exc):
            raise DuplicateIdempotencyKey(job.idempotency_key) from None
        raise


class PostgresJobStore(Waking, FleetQueries, OutboxQueries, JobStore):
    """The JobStore interface on PostgreSQL, plus the claims and leases of a cluster."""

    shared = True

    def __init__(self, url: str, pool_size: int = 20, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool_lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._listener: Listener | None = None
        self.migrate()
        # Every column but the graph, for reads without it (the largest column: sent and
        # decoded for nothing on every reconciliation pass otherwise). pg_attribute resolves
        # `jobs` through the search path, as the statements do.
        names = self._run(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            fetch="all",
        )
        self._without_graph = ", ".join(
            f'"{row["attname"]}"' for row in names if row["attname"] != "graph"
        )
        self._state_columns = ", ".join(
            f'"{row["attname"]}"' for row in names if row["attname"] not in JSON_COLUMNS
        )

    # --- connections ------------------------------------------------------------------------

    def _connections(self) -> ConnectionPool:
        # One pool per process, opened after fork.
        if self._pool is None or self._pid != os.getpid():
            with self._pool_lock:
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ConnectionPool(
                        self.url,
                        min_size=1,
                        max_size=self.pool_size,
                        kwargs={
                            "autocommit": True,
                            "row_factory": dict_row,
                            "connect_timeout": int(self.connect_timeout),
                        },
                        timeout=self.connect_timeout,
                        reconnect_timeout=0,
                        check=_check,
                        open=False,
                        name="sidecar-jobs",
                    )
                    self._pool.open(wait=False)
                    self._pid = os.getpid()
                    self._listener = None
        return self._pool

    def _run(self, sql: str, args: Iterable[Any] = (), *, fetch: str = "none"):
        """One statement on a pooled connection; StoreUnavailable when PostgreSQL is not."""
        try:
            with self._connections().connection() as conn:
                cur = conn.execute(sql, tuple(args))
                if fetch == "one":
                    return cur.fetchone()
                if fetch == "all":
                    return cur.fetchall()
                return cur.rowcount
        except psycopg.errors.UniqueViolation:
            raise
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise StoreUnavailable(f"the job database is not answering ({exc})") from exc
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise StoreUnavailable(f"the job database is not answering ({exc})") from exc
            raise

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None

    @staticmethod
    def decode_row(row: dict | None) -> Job | None:
        return decode(row)

    def migrate(self) -> int:
        """Bring the schema to the newest version (under a lock: nodes may start at once)."""
        return migrate(self.url)

    def now(self) -> float:
        return self._run(f"SELECT {NOW} AS now", fetch="one")["now"]

    # --- creating and finding -------------------------------------------------------------

    def create(self, job: Job) -> None:
        self._insert(job)
        # No wake-up yet: the accepting node claims the job itself when it has room (in the
        # same transaction: create_claimed), and announces it (notify_queue) when it does not.

    def _insert(self, job: Job) -> dict:
        """A new job's row, queued for any node; the row as written, but its graph."""
        columns, values, args = inserting(job)
        with duplicate_key(job):
            return self._run(
                f"INSERT INTO jobs ({columns}) VALUES ({values}) RETURNING {self._without_graph}",
                args,
                fetch="one",
            )

    def create_claimed(
        self, job: Job, node: str, workflows: Iterable[str], max_held: int, lease: float
    ) -> Job:
        """create(), and the new job claimed for `node` in the same transaction when that node
        may hold one more unfinished job (claim's lock and count) and can run it. Returns the
        job as written (the database's clock; its graph as sent, not read back): claimed (its
        `node` is `node`), or queued for the first node with room (no `node`). A submission's
        row, its claim and its read were three transactions, six round trips and a second
        version of the row."""
        if job.workflow not in workflows or job.pinned_node not in (None, node):
            row = self._insert(job)
        else:
            columns, values, args = inserting(job)
            try:
                with (
                    duplicate_key(job),
                    self._connections().connection() as conn,
                    conn.transaction(),
                ):
                    lock_claims(conn, node)
                    # No NOTIFY: nobody waits on a job whose submission has not answered yet (a
                    # replay of its Idempotency-Key reads the committed row before it waits).
                    row = conn.execute(
                        f"""
                        WITH room AS (SELECT {SQL_HELD} < %s AS free)
                        INSERT INTO jobs ({columns}, node, lease_until)
                        SELECT {values}, CASE WHEN free THEN %s END,
                            CASE WHEN free THEN {NOW} + %s END
                        FROM room
                        RETURNING {self._without_graph}
                        """,
                        (node, max_held, *args, node, lease),
                    ).fetchone()
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"the job database is not answering ({exc})") from exc
        written = decode(row, graph=False)
        written.graph = job.graph
        return written

    def get(self, job_id: str) -> Job | None:
        return decode(self._run("SELECT * FROM jobs WHERE id = %s", (job_id,), fetch="one"))

    def find_by_prompt(self, prompt_id: str) -> Job | None:
        row = self._run("SELECT * FROM jobs WHERE prompt_id = %s", (prompt_id,), fetch="one")
        return decode(row)

    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> Job | None:
        row = self._run(
            "SELECT * FROM jobs WHERE COALESCE(owner, '') = %s AND idempotency_key = %s",
            (owner or "", key),
            fetch="one",
        )
        return decode(row)

    def find_by_image(self, name: str) -> Job | None:
        row = self._run(
            "SELECT jobs.* FROM images JOIN jobs ON jobs.id = images.job_id"
            " WHERE images.name = %s ORDER BY jobs.finished_at DESC LIMIT 1",
            (name,),
            fetch="one",
        )
        return decode(row)

    def discard(self, job_id: str) -> None:
        self._run("DELETE FROM jobs WHERE id = %s", (job_id,))

    # --- the job's life ---------------------------------------------------------------------

    def _update(self, sql: str, args: Iterable[Any]) -> int:
        """An UPDATE that notifies the waiters of every job it changed, in one statement (one
        round trip; the notifications are delivered when it commits)."""
        rows = self._run(
            f"WITH changed AS ({sql} RETURNING jobs.id, jobs.updated_at, jobs.status)"
            f" SELECT {notify_sql('changed')} FROM changed",
            args,
            fetch="all",
        )
        return len(rows)

    def mark_submitted(
        self,
        job_id: str,
        prompt_id: str,
        planned: str | None = None,
        number: float | None = None,
    ) -> bool:
        fence = "" if planned is None else " AND prompt_id = %s"
        return (
            self._update(
                f"UPDATE jobs SET prompt_id = %s, queue_number = %s, submitted_at = {NOW},"
                f" updated_at = {NOW} WHERE id = %s{fence}",
                (prompt_id, number, job_id, *([] if planned is None else [planned])),
            )
            > 0
        )

    def mark_resubmitted(self, job_id: str, prompt_id: str, number: float | None = None) -> None:
        self._update(
            f"UPDATE jobs SET prompt_id = %s, queue_number = %s, submitted_at = {NOW},"
            f" attempts = attempts + 1, queue_position = NULL, status = 'queued',"
            f" updated_at = {NOW} WHERE id = %s AND {SQL_UNFINISHED}",
            (prompt_id, number, job_id),
        )

    def mark_processing(self, prompt_id: str, node: str | None = None) -> bool:
        return (
            self._update(
                f"UPDATE jobs SET status = 'processing', started_at = COALESCE(started_at, {NOW}),"
                f" current_node = COALESCE(%s, current_node), queue_position = 0,"
                f" updated_at = {NOW} WHERE prompt_id = %s AND {SQL_UNFINISHED}",
                (node, prompt_id),
            )
            > 0
        )

    def record_progress(self, prompt_id: str, value: int, maximum: int, node: str | None) -> bool:
        if maximum <= 0:
            return False
        fraction = min(max(value / maximum, 0.0), 1.0)
        return (
            self._update(
                f"UPDATE jobs SET status = 'processing', started_at = COALESCE(started_at, {NOW}),"
                " progress = GREATEST(progress, %s), current_step = %s, total_steps = %s,"
                f" current_node = COALESCE(%s, current_node), updated_at = {NOW}"
                f" WHERE prompt_id = %s AND {SQL_UNFINISHED}",
                (fraction, value, maximum, node, prompt_id),
            )
            > 0
        )

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
        outputs = outputs or []
        progress_sql = ", progress = 1.0" if status == JobStatus.COMPLETED else ""
        started_sql, started = "", []
        if ran_for is not None:
            # The database's clock, as every other time of a job on this store.
            started_sql = (
                f", started_at = COALESCE(started_at,"
                f" GREATEST(created_at, {NOW} - %s::double precision))"
            )
            started = [max(ran_for, 0.0)]
        fence, args = "", [job_id]
        if prompt_id is not None:
            fence, args = " AND prompt_id = %s", [job_id, prompt_id]
        if unclaimed:
            fence += " AND node IS NULL"
        # One statement (one round trip, atomic as a transaction): the row, its images, the
        # outbox, and the notifications, sent when it commits.
        row = self._run(
            f"""
            WITH done AS (
                UPDATE jobs SET status = %s, outputs = %s, error = %s, error_details = %s,
                    finished_at = {NOW}, updated_at = {NOW}, queue_position = NULL,
                    lease_until = NULL{progress_sql},
                    current_node = COALESCE(%s, current_node){started_sql}
                WHERE id = %s AND {SQL_UNFINISHED}{fence}
                RETURNING {self._without_graph}),
            made AS (
                INSERT INTO images (name, job_id, node)
                SELECT name, done.id, done.node FROM done, unnest(%s::text[]) AS name
                ON CONFLICT DO NOTHING),
            -- A progress event still waiting is older news than the end.
            superseded AS ({superseding("SELECT id FROM done")}),
            added AS ({adding("SELECT id FROM done")})
            SELECT done.*, {notify_sql("done")} AS notified,
                CASE WHEN done.node IS NOT NULL THEN pg_notify('{ROOM_CHANNEL}', done.node) END
                    AS room
            FROM done
            """,
            (
                status.value,
                json.dumps(outputs),
                error,
                None if error_details is None else json.dumps(error_details),
                node,
                *started,
                *args,
                list(dict.fromkeys(output_files(outputs))),
                PROGRESS_EVENT,
                None,
                None,
                *delivery_columns(deliveries),
            ),
            fetch="one",
        )
        if row is None:
            return None
        del row["notified"], row["room"]
        return decode(row, graph=False)

    def add_file(self, job_id: str, name: str) -> None:
        # A saved copy lives where the job's images are: on the node that ran it.
        self._run(
            "INSERT INTO images (name, job_id, node) SELECT %s, id, node FROM jobs"
            " WHERE id = %s ON CONFLICT DO NOTHING",
            (name, job_id),
        )

    def owns_file(self, owner: str, name: str) -> bool:
        row = self._run(
            "SELECT 1 AS found FROM images JOIN jobs ON jobs.id = images.job_id"
            " WHERE images.name = %s AND jobs.owner = %s LIMIT 1",
            (name, owner),
            fetch="one",
        )
        return row is not None

    def files_of(self, owner: str) -> set[str]:
        rows = self._run(
            "SELECT DISTINCT images.name FROM images JOIN jobs ON jobs.id = images.job_id"
            " WHERE jobs.owner = %s",
            (owner,),
            fetch="all",
        )
        return {row["name"] for row in rows}

    def set_queue_positions(self, positions: dict[str, int | None]) -> None:
        if not positions:
            return
        self._update(
            f"UPDATE jobs SET queue_position = p.position, updated_at = {NOW}"
            " FROM unnest(%s::text[], %s::int[]) AS p(prompt_id, position)"
            " WHERE jobs.prompt_id = p.prompt_id"
            f" AND jobs.{SQL_UNFINISHED}"
            " AND jobs.queue_position IS DISTINCT FROM p.position",
            (list(positions), list(positions.values())),
        )

    def record_option(self, job_id: str, key: str, value: Any) -> None:
        with self._connections().connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT options FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                return
            options = json.loads(row["options"])
            options[key] = value
            conn.execute(
                f"UPDATE jobs SET options = %s, updated_at = {NOW} WHERE id = %s",
                (json.dumps(options), job_id),
            )
            conn.execute(f"SELECT {notify_sql()} FROM jobs WHERE id = %s", (job_id,))

    # --- reading many -----------------------------------------------------------------------

    def _columns(self, graph: bool) -> str:
        return "*" if graph else self._without_graph

    def unfinished(self, node: str | None = None, graph: bool = True) -> list[Job]:
        return self._unfinished(node, self._columns(graph), graph)

    def unfinished_states(self, node: str | None = None) -> list[Job]:
        return self._unfinished(node, self._state_columns, graph=False)

    def _unfinished(self, node: str | None, columns: str, graph: bool) -> list[Job]:
        if node is None:
            rows = self._run(
                f"SELECT {columns} FROM jobs WHERE {SQL_UNFINISHED} ORDER BY created_at",
                fetch="all",
            )
        else:
            rows = self._run(
                f"SELECT {columns} FROM jobs WHERE {SQL_UNFINISHED} AND node = %s"
                " ORDER BY created_at",
                (node,),
                fetch="all",
            )
        return [decode(r, graph) for r in rows]

    def page(
        self,
        statuses: Iterable[str] | None,
        limit: int,
        offset: int,
        newest_by: str = "created_at",
        owner: str | None = None,
    ) -> tuple[list[Job], int]:
        if newest_by not in ("created_at", "finished_at"):
            raise ValueError("newest_by must be created_at or finished_at")
        where, args = _where(statuses, owner)
        rows = self._run(
            f"SELECT * FROM jobs {where} ORDER BY {newest_by} DESC NULLS LAST, id DESC"
            " LIMIT %s OFFSET %s",
            [*args, limit, offset],
            fetch="all",
        )
        total = self._run(f"SELECT COUNT(*) AS n FROM jobs {where}", args, fetch="one")["n"]
        return [decode(r) for r in rows], total

    def count(self, statuses: Iterable[str] | None = None, owner: str | None = None) -> int:
        where, args = _where(statuses, owner)
        return self._run(f"SELECT COUNT(*) AS n FROM jobs {where}", args, fetch="one")["n"]

    def counts(self, statuses: Iterable[str] | None = None) -> dict[str, int]:
        statuses = list(JobStatus if statuses is None else statuses)
        where, args = _where(None if len(statuses) == len(JobStatus) else statuses, None)
        rows = self._run(
            f"SELECT status, COUNT(*) AS n FROM jobs {where} GROUP BY status", args, fetch="all"
        )
        found = {row["status"]: row["n"] for row in rows}
        return {str(status): found.get(status, 0) for status in statuses}

    def version(self, job_id: str) -> tuple[float, str] | None:
        row = self._run("SELECT updated_at, status FROM jobs WHERE id = %s", (job_id,), fetch="one")
        return None if row is None else (row["updated_at"], row["status"])

    def versions_since(self, after: float) -> dict[str, tuple[float, str]]:
        rows = self._run(
            "SELECT id, updated_at, status FROM jobs WHERE status IN ('queued', 'processing')"
            " OR updated_at > %s",
            (after,),
            fetch="all",
        )
        return {row["id"]: (row["updated_at"], row["status"]) for row in rows}

    def versions_of(self, job_ids: Sequence[str]) -> dict[str, tuple[float, str]]:
        rows = self._run(
            "SELECT id, updated_at, status FROM jobs WHERE id = ANY(%s)",
            (list(job_ids),),
            fetch="all",
        )
        return {row["id"]: (row["updated_at"], row["status"]) for row in rows}

    def get_many(self, job_ids: Sequence[str], graph: bool = True) -> list[Job]:
        rows = self._run(
            f"SELECT {self._columns(graph)} FROM jobs WHERE id = ANY(%s)",
            (list(dict.fromkeys(job_ids)),),
            fetch="all",
        )
        found = {row["id"]: decode(row, graph) for row in rows}
        return [found[job_id] for job_id in job_ids if job_id in found]

    def last_activity(self) -> float | None:
        # Each part an index's edge, as on SQLite: started_at has no index of its own.
        return self._run(
            "SELECT GREATEST((SELECT MAX(created_at) FROM jobs), (SELECT MAX(finished_at)"
            " FROM jobs), (SELECT MAX(started_at) FROM jobs WHERE status IN"
            " ('queued', 'processing'))) AS t",
            fetch="one",
        )["t"]

    def last_created_at(self) -> float | None:
        return self._run("SELECT MAX(created_at) AS t FROM jobs", fetch="one")["t"]

    def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        rows = self._run(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < %s"
            " ORDER BY finished_at LIMIT %s) RETURNING *",
            (finished_before, limit),
            fetch="all",
        )
        return [decode(r) for r in rows]

    # --- small facts shared between processes ---------------------------------------------

    def put_meta(self, key: str, value: Any) -> None:
        self._run(
            f"INSERT INTO meta (key, value, updated_at) VALUES (%s, %s, {NOW})"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, json.dumps(value)),
        )

    def setdefault_meta(self, key: str, value: Any) -> Any:
        self._run(
            f"INSERT INTO meta (key, value, updated_at) VALUES (%s, %s, {NOW})"
            " ON CONFLICT (key) DO NOTHING",
            (key, json.dumps(value)),
        )
        return self.get_meta(key)[0]

    def get_meta(self, key: str) -> tuple[Any, float] | None:
        row = self._run("SELECT value, updated_at FROM meta WHERE key = %s", (key,), fetch="one")
        return None if row is None else (json.loads(row["value"]), row["updated_at"])
