"""The outbox (webhooks and uploads a job owes) and batches, as queries on the embedded
SQLite store: mixed into SQLiteJobStore (api/sqlite_store.py), whose connection and
transactions it uses. api/postgres_outbox.py is the same on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from api.batch import Batch
from api.delivery import PROGRESS_EVENT, Delivery, DeliveryKind, DeliveryState, NewDelivery
from api.exceptions import DuplicateIdempotencyKey


def _delivery(row: sqlite3.Row | None) -> Delivery | None:
    if row is None:
        return None
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    return Delivery.from_row(values)


class OutboxQueries:
    """The outbox and batches for SQLiteJobStore (`_exec`, `_transaction` are the store's)."""

    @staticmethod
    def _supersede(
        conn: sqlite3.Connection, job_id: str, event: str, target: str | None, now: float
    ) -> None:
        conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = NULL"
            " WHERE job_id = ? AND event = ? AND state = ? AND lease_owner IS NULL"
            " AND (? IS NULL OR target = ?)",
            (DeliveryState.SUPERSEDED, job_id, event, DeliveryState.PENDING, target, target),
        )

    @staticmethod
    def _insert_deliveries(
        conn: sqlite3.Connection, job_id: str, deliveries: Sequence[NewDelivery], now: float
    ) -> None:
        conn.executemany(
            "INSERT INTO deliveries (id, job_id, kind, event, target, payload, state,"
            " created_at, expires_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    d.id,
                    job_id,
                    d.kind,
                    d.event,
                    d.target,
                    json.dumps(d.payload),
                    DeliveryState.PENDING,
                    now,
                    now + d.retry_for,
                    now,
                )
                for d in deliveries
            ],
        )

    def add_deliveries(
        self, job_id: str, deliveries: Sequence[NewDelivery], supersede_event: str | None = None
    ) -> None:
        now = time.time()
        with self._transaction() as conn:
            if supersede_event is not None:
                for target in {d.target for d in deliveries}:
                    self._supersede(conn, job_id, supersede_event, target, now)
            self._insert_deliveries(conn, job_id, deliveries, now)

    def claim_delivery(
        self, owner: str, lease_seconds: float, uploads_of: str | None = None
    ) -> Delivery | None:
        # One node holds every job of an embedded store: `uploads_of` changes nothing here.
        now = time.time()
        row = self._exec(
            "UPDATE deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1,"
            " last_attempt_at = ?"
            " WHERE id = (SELECT d.id FROM deliveries d"
            "  WHERE d.state = ? AND d.next_attempt_at <= ?"
            "  AND (d.lease_until IS NULL OR d.lease_until < ?)"
            "  AND (d.kind = ? OR NOT EXISTS (SELECT 1 FROM deliveries u"
            "   WHERE u.job_id = d.job_id AND u.kind = ? AND u.state = ?))"
            "  ORDER BY d.next_attempt_at LIMIT 1)"
            " RETURNING *",
            (
                owner,
                now + lease_seconds,
                now,
                DeliveryState.PENDING,
                now,
                now,
                DeliveryKind.UPLOAD,
                DeliveryKind.UPLOAD,
                DeliveryState.PENDING,
            ),
        ).fetchone()
        return _delivery(row)

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
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT job_id, expires_at FROM deliveries WHERE id = ? AND lease_owner = ?",
                (delivery_id, owner),
            ).fetchone()
            if row is None:
                return False
            next_at = None
            if state == DeliveryState.PENDING:
                next_at = now + (retry_in or 0.0)
                if next_at > row["expires_at"]:
                    state, next_at = DeliveryState.FAILED, None
                    error = f"{error}; gave up (its retry window is over)"
            conn.execute(
                "UPDATE deliveries SET state = ?, last_status = ?, last_error = ?,"
                " next_attempt_at = ?, delivered_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE id = ?",
                (
                    state,
                    status,
                    error,
                    next_at,
                    now if state == DeliveryState.DELIVERED else None,
                    delivery_id,
                ),
            )
            if stored_object is not None and state == DeliveryState.DELIVERED:
                conn.execute(
                    "UPDATE jobs SET objects = json_insert(objects, '$[#]', json(?)),"
                    " updated_at = ? WHERE id = ?",
                    (json.dumps(stored_object), now, row["job_id"]),
                )
        return True

    def deliveries(self, job_id: str) -> list[Delivery]:
        rows = self._exec(
            "SELECT * FROM deliveries WHERE job_id = ? ORDER BY created_at, rowid", (job_id,)
        ).fetchall()
        return [_delivery(r) for r in rows]

    def redeliver(self, job_id: str, retry_for: float) -> list[Delivery]:
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = ?, expires_at = ?"
                " WHERE job_id = ? AND lease_owner IS NULL AND event != ?"
                " AND (kind = ? OR state != ?)"
                " RETURNING *",
                (
                    DeliveryState.PENDING,
                    now,
                    now + retry_for,
                    job_id,
                    PROGRESS_EVENT,
                    DeliveryKind.WEBHOOK,
                    DeliveryState.DELIVERED,
                ),
            ).fetchall()
        return sorted((_delivery(r) for r in rows), key=lambda d: d.created_at)

    def seconds_until_next_delivery(self) -> float | None:
        # The rule of claim_delivery: a webhook waiting for its job's uploads is not due.
        row = self._exec(
            "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0))) FROM deliveries d"
            " WHERE d.state = ? AND (d.kind = ? OR NOT EXISTS (SELECT 1 FROM deliveries u"
            "  WHERE u.job_id = d.job_id AND u.kind = ? AND u.state = ?))",
            (
                DeliveryState.PENDING,
                DeliveryKind.UPLOAD,
                DeliveryKind.UPLOAD,
                DeliveryState.PENDING,
            ),
        ).fetchone()
        if row[0] is None:
            return None
        return max(0.0, row[0] - time.time())

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        rows = self._exec(
            "SELECT kind, state, COUNT(*) FROM deliveries GROUP BY kind, state"
        ).fetchall()
        return {(kind, state): count for kind, state, count in rows}

    def create_batch(self, batch: Batch) -> Batch:
        try:
            self._exec(
                "INSERT INTO batches"
                " (id, job_ids, idempotency_key, request_hash, created_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    json.dumps(batch.job_ids),
                    batch.idempotency_key,
                    batch.request_hash,
                    batch.created_at or time.time(),
                    batch.owner,
                ),
            )
        except sqlite3.IntegrityError as exc:
            if "batches_idempotency" in str(exc):
                raise DuplicateIdempotencyKey(batch.idempotency_key) from None
            raise
        return self.get_batch(batch.id)

    def set_batch_jobs(self, batch_id: str, job_ids: Sequence[str]) -> None:
        self._exec(
            "UPDATE batches SET job_ids = ? WHERE id = ?", (json.dumps(list(job_ids)), batch_id)
        )

    def get_batch(self, batch_id: str) -> Batch | None:
        return self._batch(self._exec("SELECT * FROM batches WHERE id = ?", (batch_id,)))

    def find_batch_by_idempotency_key(self, key: str, owner: str | None = None) -> Batch | None:
        return self._batch(
            self._exec(
                "SELECT * FROM batches WHERE COALESCE(owner, '') = ? AND idempotency_key = ?",
                (owner or "", key),
            )
        )

    def discard_batch(self, batch_id: str) -> None:
        self._exec("DELETE FROM batches WHERE id = ?", (batch_id,))

    @staticmethod
    def _batch(cursor: sqlite3.Cursor) -> Batch | None:
        row = cursor.fetchone()
        if row is None:
            return None
        values = dict(row)
        values["job_ids"] = json.loads(values["job_ids"])
        return Batch.from_row(values)
