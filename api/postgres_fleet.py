"""The claims, leases and nodes of a cluster, as queries on the shared PostgreSQL store.

Mixed into PostgresJobStore (api/postgres_store.py), whose connections it uses; the node-side
logic that calls these is api/fleet.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import psycopg

from api.exceptions import StoreUnavailable
from api.job import Job
from api.jobstore import NodeInfo
from api.postgres_listener import NOW, notify_sql

SQL_UNFINISHED = "status IN ('queued', 'processing')"
# How many unfinished jobs a node (%s) holds: what its claims count against COMFYUI_MAX_PENDING.
SQL_HELD = f"(SELECT COUNT(*) FROM jobs WHERE node = %s AND {SQL_UNFINISHED})"


def lock_claims(conn: psycopg.Connection, node: str) -> None:
    """Serialise a node's claims (until the transaction ends), so that its count of what it
    holds never passes its room: the count must be a statement after this one, to see every
    claim committed before the lock was granted."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (node,))


class FleetQueries:
    """Claims, leases, cancel requests and the nodes table (for PostgresJobStore)."""

    def claim(self, node: str, workflows: Iterable[str], max_held: int, lease: float) -> list[Job]:
        """Take queued jobs this node can run (priority, then age) until it holds `max_held`
        unfinished jobs, each for `lease` seconds (a node's own new job is claimed as it is
        written: create_claimed). Each claimed job gets a new planned prompt_id, its fencing
        token for this attempt. Claims of one node are serialised (an advisory lock), so the
        count it holds never passes `max_held`."""
        workflows = list(workflows)
        claimable = (
            "status = 'queued' AND node IS NULL AND NOT cancel_requested"
            " AND workflow = ANY(%s) AND COALESCE(pinned_node, %s) = %s"
        )
        # Most looks for the next job (one after each job a node finishes) find none: one
        # statement says so, where the claim takes a transaction of four. (A job queued after
        # it wakes the dispatchers again, or its own node claims it.)
        if not self._run(
            f"SELECT EXISTS (SELECT 1 FROM jobs WHERE {claimable}) AS found",
            (workflows, node, node),
            fetch="one",
        )["found"]:
            return []
        try:
            # (Pipelining these statements cost more here than the round trips it saves.)
            with self._connections().connection() as conn, conn.transaction():
                lock_claims(conn, node)
                rows = conn.execute(
                    f"""
                    WITH claimed AS (
                        UPDATE jobs SET node = %s, lease_until = {NOW} + %s,
                            prompt_id = gen_random_uuid()::text, submitted_at = NULL,
                            queue_position = NULL, updated_at = {NOW}
                        WHERE id IN (
                            SELECT id FROM jobs WHERE {claimable}
                            ORDER BY priority DESC, created_at
                            LIMIT GREATEST(%s - {SQL_HELD}, 0)
                            FOR UPDATE SKIP LOCKED)
                        RETURNING *)
                    SELECT claimed.*, {notify_sql('claimed')} AS notified
                    FROM claimed
                    """,
                    (node, lease, workflows, node, node, max_held, node),
                ).fetchall()  # fmt: skip
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the job database is not answering ({exc})") from exc
        jobs = [self.decode_row(r) for r in rows]
        jobs.sort(key=lambda j: (-int(j.options.get("priority") == "high"), j.created_at))
        return jobs

    def record_upload(self, name: str, node: str) -> None:
        """An input image `name` is now in this node's ComfyUI (the newest upload wins)."""
        self._run(
            f"INSERT INTO uploads (name, node, uploaded_at) VALUES (%s, %s, {NOW})"
            " ON CONFLICT (name) DO UPDATE SET node = excluded.node,"
            " uploaded_at = excluded.uploaded_at",
            (name, node),
        )

    def upload_node(self, name: str) -> str | None:
        row = self._run("SELECT node FROM uploads WHERE name = %s", (name,), fetch="one")
        return None if row is None else row["node"]

    def release(self, job_id: str, prompt_id: str) -> bool:
        """Give a claimed job back to the queue (its ComfyUI could not take it)."""
        released = self._update(
            "UPDATE jobs SET node = NULL, lease_until = NULL, prompt_id = NULL,"
            f" submitted_at = NULL, status = 'queued', updated_at = {NOW}"
            f" WHERE id = %s AND prompt_id = %s AND {SQL_UNFINISHED}",
            (job_id, prompt_id),
        )
        if released:
            self.notify_queue()
        return released > 0

    def renew_leases(self, node: str, lease: float) -> int:
        return self._run(
            f"UPDATE jobs SET lease_until = {NOW} + %s WHERE node = %s AND {SQL_UNFINISHED}",
            (lease, node),
        )

    def expired(self) -> list[Job]:
        """Unfinished claimed jobs whose lease has lapsed (their node stopped renewing)."""
        rows = self._run(
            f"SELECT * FROM jobs WHERE node IS NOT NULL AND {SQL_UNFINISHED}"
            f" AND lease_until < {NOW} ORDER BY created_at",
            fetch="all",
        )
        return [self.decode_row(r) for r in rows]

    def overdue_unclaimed(self) -> list[Job]:
        """Queued jobs no node holds whose deadline has passed."""
        rows = self._run(
            "SELECT * FROM jobs WHERE status = 'queued' AND node IS NULL"
            f" AND deadline < {NOW} ORDER BY created_at LIMIT 100",
            fetch="all",
        )
        return [self.decode_row(r) for r in rows]

    def requeue(self, job_id: str, prompt_id: str | None) -> bool:
        """Take a job back from a node that lost it: queued again, unclaimed, attempts + 1."""
        requeued = self._update(
            "UPDATE jobs SET node = NULL, lease_until = NULL, prompt_id = NULL,"
            " submitted_at = NULL, status = 'queued', queue_position = NULL,"
            " current_node = NULL, attempts = attempts + 1, progress = 0,"
            f" current_step = 0, updated_at = {NOW}"
            f" WHERE id = %s AND prompt_id IS NOT DISTINCT FROM %s AND {SQL_UNFINISHED}",
            (job_id, prompt_id),
        )
        if requeued:
            self.notify_queue()
        return requeued > 0

    def request_cancel(self, job_id: str) -> bool:
        """Ask the node that holds a job to stop it (it cancels it in its own ComfyUI)."""
        asked = self._update(
            f"UPDATE jobs SET cancel_requested = true, updated_at = {NOW}"
            f" WHERE id = %s AND {SQL_UNFINISHED}",
            (job_id,),
        )
        if asked:
            self.notify_queue()
        return asked > 0

    def cancel_requests(self, node: str) -> list[Job]:
        rows = self._run(
            f"SELECT * FROM jobs WHERE node = %s AND cancel_requested AND {SQL_UNFINISHED}",
            (node,),
            fetch="all",
        )
        return [self.decode_row(r) for r in rows]

    def heartbeat(self, node: NodeInfo) -> None:
        self._run(
            f"INSERT INTO nodes (id, info, started_at, heartbeat_at) VALUES (%s, %s, {NOW}, {NOW})"
            " ON CONFLICT (id) DO UPDATE SET info = excluded.info,"
            " heartbeat_at = excluded.heartbeat_at",
            (node.id, json.dumps(node.as_dict())),
        )

    def nodes(self) -> list[tuple[NodeInfo, float, float]]:
        """(info, seconds since its heartbeat, when it started) of every node ever seen."""
        rows = self._run(
            f"SELECT info, {NOW} - heartbeat_at AS age, started_at FROM nodes ORDER BY id",
            fetch="all",
        )
        return [
            (NodeInfo.from_dict(json.loads(r["info"])), r["age"], r["started_at"]) for r in rows
        ]

    def jobs_done(self) -> dict[str, int]:
        rows = self._run(
            "SELECT node, COUNT(*) AS n FROM jobs WHERE status = 'completed'"
            " AND node IS NOT NULL GROUP BY node",
            fetch="all",
        )
        return {r["node"]: r["n"] for r in rows}
