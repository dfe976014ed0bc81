"""The outbox (webhooks and uploads a job owes) and batches, as queries on the shared
PostgreSQL store: the same rules as the embedded store's (api/sqlite_store.py), with claims
taken FOR UPDATE SKIP LOCKED so the senders of every node share one outbox.

Mixed into PostgresJobStore (api/postgres_store.py), whose connections it uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg

from api.batch import Batch
from api.delivery import PROGRESS_EVENT, Delivery, DeliveryKind, DeliveryState, NewDelivery
from api.exceptions import DuplicateIdempotencyKey
from api.postgres_listener import NOW

# A webhook is due only once its job has no upload pending: receivers get output_urls.
DUE = (
    f"d.state = 'pending' AND d.next_attempt_at <= {NOW}"
    f" AND (d.lease_until IS NULL OR d.lease_until < {NOW})"
    " AND (d.kind = 'upload' OR NOT EXISTS (SELECT 1 FROM deliveries u"
    "  WHERE u.job_id = d.job_id AND u.kind = 'upload' AND u.state = 'pending'))"
)


def delivery(row: dict | None) -> Delivery | None:
    if row is None:
        return None
    row["payload"] = json.loads(row["payload"])
    return Delivery.from_row(row)


def superseding(job_ids: str) -> str:
    """SQL: the pending, unclaimed deliveries of an event (%s) for a target (%s, twice; None:
    any) of the jobs `job_ids` (SQL: a list of job ids, or a query of them) are older news."""
    return (
        "UPDATE deliveries SET state = 'superseded', next_attempt_at = NULL"
        f" WHERE job_id IN ({job_ids}) AND event = %s AND state = 'pending'"
        " AND lease_owner IS NULL AND (%s::text IS NULL OR target = %s)"
    )


def adding(job_id: str) -> str:
    """SQL: the deliveries of `delivery_columns()` owed by the job `job_id` (SQL: a query of
    its id), in one statement whatever their number."""
    return (
        "INSERT INTO deliveries (id, job_id, kind, event, target, payload, state, created_at,"
        " expires_at, next_attempt_at)"
        " SELECT d.id, j.id, d.kind, d.event, d.target, d.payload, 'pending',"
        f" {NOW}, {NOW} + d.retry_for, {NOW}"
        f" FROM ({job_id}) AS j(id), unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::double precision[]) AS d(id, kind, event, target, payload, retry_for)"
    )


def delivery_columns(deliveries: Sequence[NewDelivery]) -> list[list]:
    """The arguments of `adding()`: one array per column."""
    return [
        [d.id for d in deliveries],
        [str(d.kind) for d in deliveries],
        [d.event for d in deliveries],
        [d.target for d in deliveries],
        [json.dumps(d.payload) for d in deliveries],
        [d.retry_for for d in deliveries],
    ]


class OutboxQueries:
    """The outbox and batches for PostgresJobStore (`_connections`, `_run` are the store's)."""

    # --- the outbox -------------------------------------------------------------------------

    def add_deliveries(
        self, job_id: str, deliveries: Sequence[NewDelivery], supersede_event: str | None = None
    ) -> None:
        with self._connections().connection() as conn, conn.transaction():
            if supersede_event is not None:
                for target in {d.target for d in deliveries}:
                    conn.execute(superseding("%s"), (job_id, supersede_event, target, target))
            conn.execute(adding("SELECT %s::text"), (job_id, *delivery_columns(deliveries)))

    def claim_delivery(
        self, owner: str, lease_seconds: float, uploads_of: str | None = None
    ) -> Delivery | None:
        mine, args = "", [owner, lease_seconds]
        if uploads_of is not None:
            mine = (
                " AND (d.kind != 'upload' OR EXISTS (SELECT 1 FROM jobs j"
                "  WHERE j.id = d.job_id AND j.node = %s))"
            )
            args.append(uploads_of)
        row = self._run(
            f"UPDATE deliveries SET lease_owner = %s, lease_until = {NOW} + %s,"
            f" attempts = attempts + 1, last_attempt_at = {NOW}"
            " WHERE id = (SELECT d.id FROM deliveries d"
            f" WHERE {DUE}{mine} ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE OF d SKIP LOCKED)"
            " RETURNING *",
            args,
            fetch="one",
        )
        return delivery(row)

    def settle_delivery(
        self,
        delivery_id: str,
        owner: str,
        state: DeliveryState,
        status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
        stored_object: dict | None = None,
    ) -> bool:
        with self._connections().connection() as conn, conn.transaction():
            row = conn.execute(
                f"SELECT job_id, expires_at, {NOW} AS now FROM deliveries"
                " WHERE id = %s AND lease_owner = %s FOR UPDATE",
                (delivery_id, owner),
            ).fetchone()
            if row is None:
                return False
            now, next_at = row["now"], None
            if state == DeliveryState.PENDING:
                next_at = now + (retry_in or 0.0)
                if next_at > row["expires_at"]:
                    state, next_at = DeliveryState.FAILED, None
                    error = f"{error}; gave up (its retry window is over)"
            conn.execute(
                "UPDATE deliveries SET state = %s, last_status = %s, last_error = %s,"
                " next_attempt_at = %s, delivered_at = %s, lease_owner = NULL,"
                " lease_until = NULL WHERE id = %s",
                (
                    state.value,
                    status,
                    error,
                    next_at,
                    now if state == DeliveryState.DELIVERED else None,
                    delivery_id,
                ),
            )
            if stored_object is not None and state == DeliveryState.DELIVERED:
                job = conn.execute(
                    "SELECT objects FROM jobs WHERE id = %s FOR UPDATE", (row["job_id"],)
                ).fetchone()
                if job is not None:
                    objects = [*json.loads(job["objects"]), stored_object]
                    conn.execute(
                        f"UPDATE jobs SET objects = %s, updated_at = {NOW} WHERE id = %s",
                        (json.dumps(objects), row["job_id"]),
                    )
        return True

    def deliveries(self, job_id: str) -> list[Delivery]:
        rows = self._run(
            "SELECT * FROM deliveries WHERE job_id = %s ORDER BY created_at, id",
            (job_id,),
            fetch="all",
        )
        return [delivery(r) for r in rows]

    def redeliver(self, job_id: str, retry_for: float) -> list[Delivery]:
        rows = self._run(
            f"UPDATE deliveries SET state = 'pending', next_attempt_at = {NOW},"
            f" expires_at = {NOW} + %s WHERE job_id = %s AND lease_owner IS NULL"
            " AND event != %s AND (kind = %s OR state != %s) RETURNING *",
            (
                retry_for,
                job_id,
                PROGRESS_EVENT,
                DeliveryKind.WEBHOOK.value,
                DeliveryState.DELIVERED.value,
            ),
            fetch="all",
        )
        return sorted((delivery(r) for r in rows), key=lambda d: d.created_at)

    def seconds_until_next_delivery(self) -> float | None:
        row = self._run(
            "SELECT MIN(GREATEST(d.next_attempt_at, COALESCE(d.lease_until, 0))) - "
            f"{NOW} AS wait FROM deliveries d WHERE d.state = 'pending'"
            " AND (d.kind = 'upload' OR NOT EXISTS (SELECT 1 FROM deliveries u"
            "  WHERE u.job_id = d.job_id AND u.kind = 'upload' AND u.state = 'pending'))",
            fetch="one",
        )
        return None if row["wait"] is None else max(0.0, row["wait"])

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        rows = self._run(
            "SELECT kind, state, COUNT(*) AS n FROM deliveries GROUP BY kind, state", fetch="all"
        )
        return {(r["kind"], r["state"]): r["n"] for r in rows}

    # --- batches ----------------------------------------------------------------------------

    def create_batch(self, batch: Batch) -> Batch:
        try:
            self._run(
                "INSERT INTO batches"
                " (id, job_ids, idempotency_key, request_hash, created_at, owner)"
                f" VALUES (%s, %s, %s, %s, {NOW}, %s)",
                (
                    batch.id,
                    json.dumps(batch.job_ids),
                    batch.idempotency_key,
                    batch.request_hash,
                    batch.owner,
                ),
            )
        except psycopg.errors.UniqueViolation as exc:
            if "batches_idempotency" in str(exc):
                raise DuplicateIdempotencyKey(batch.idempotency_key) from None
            raise
        return self.get_batch(batch.id)

    def set_batch_jobs(self, batch_id: str, job_ids: Sequence[str]) -> None:
        self._run(
            "UPDATE batches SET job_ids = %s WHERE id = %s", (json.dumps(list(job_ids)), batch_id)
        )

    def get_batch(self, batch_id: str) -> Batch | None:
        return _batch(self._run("SELECT * FROM batches WHERE id = %s", (batch_id,), fetch="one"))

    def find_batch_by_idempotency_key(self, key: str, owner: str | None = None) -> Batch | None:
        row = self._run(
            "SELECT * FROM batches WHERE COALESCE(owner, '') = %s AND idempotency_key = %s",
            (owner or "", key),
            fetch="one",
        )
        return _batch(row)

    def discard_batch(self, batch_id: str) -> None:
        self._run("DELETE FROM batches WHERE id = %s", (batch_id,))


def _batch(row: dict | None) -> Batch | None:
    if row is None:
        return None
    row["job_ids"] = json.loads(row["job_ids"])
    return Batch.from_row(row)
