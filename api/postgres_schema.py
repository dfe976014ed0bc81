"""The shared store's schema, and the migrations that build it (PostgreSQL).

Every value the sidecar reads back exactly is stored as text (JSON columns as their JSON
source, so a 64-bit seed and the graph sent to ComfyUI come back byte for byte); times are
Unix seconds from the database's own clock.
"""

from __future__ import annotations

import psycopg

# Any constant: the key of the advisory lock that serialises migrations across nodes.
MIGRATION_LOCK = 7_370_461_234

# Each entry upgrades the schema by one version; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        prompt_id       TEXT UNIQUE,
        client_id       TEXT NOT NULL,
        workflow        TEXT NOT NULL,
        prompt          TEXT NOT NULL,
        params          TEXT NOT NULL,
        notes           TEXT NOT NULL,
        graph           TEXT NOT NULL,
        status          TEXT NOT NULL,
        progress        DOUBLE PRECISION NOT NULL DEFAULT 0,
        current_step    INTEGER,
        total_steps     INTEGER,
        current_node    TEXT,
        outputs         TEXT NOT NULL DEFAULT '[]',
        error           TEXT,
        error_details   TEXT,
        created_at      DOUBLE PRECISION NOT NULL,
        submitted_at    DOUBLE PRECISION,
        started_at      DOUBLE PRECISION,
        finished_at     DOUBLE PRECISION,
        updated_at      DOUBLE PRECISION NOT NULL,
        options         TEXT NOT NULL DEFAULT '{}',
        queue_position  INTEGER,
        deadline        DOUBLE PRECISION,
        idempotency_key TEXT,
        request_hash    TEXT,
        attempts        INTEGER NOT NULL DEFAULT 1,
        node            TEXT,
        lease_until     DOUBLE PRECISION,
        priority        INTEGER NOT NULL DEFAULT 0,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        objects         TEXT NOT NULL DEFAULT '[]',
        owner           TEXT,  -- the API key that made it (NULL: made without API keys)
        pinned_node     TEXT   -- only this node may claim it (api/placement.py)
    );
    -- An Idempotency-Key is unique per API key, not across keys.
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(owner, ''), idempotency_key);
    CREATE INDEX jobs_owner ON jobs (owner, status, created_at);
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE INDEX jobs_finished ON jobs (finished_at);
    CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at)
        WHERE status = 'queued' AND node IS NULL;
    CREATE INDEX jobs_node ON jobs (node) WHERE node IS NOT NULL;
    CREATE TABLE meta (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE nodes (
        id           TEXT PRIMARY KEY,
        info         TEXT NOT NULL,
        started_at   DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE deliveries (
        id              TEXT PRIMARY KEY,
        job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        kind            TEXT NOT NULL,
        event           TEXT NOT NULL,
        target          TEXT NOT NULL,
        payload         TEXT NOT NULL DEFAULT '{}',
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_at      DOUBLE PRECISION NOT NULL,
        expires_at      DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION,
        last_attempt_at DOUBLE PRECISION,
        last_status     INTEGER,
        last_error      TEXT,
        delivered_at    DOUBLE PRECISION,
        lease_owner     TEXT,
        lease_until     DOUBLE PRECISION
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
    CREATE INDEX deliveries_job ON deliveries (job_id, created_at);
    CREATE TABLE batches (
        id              TEXT PRIMARY KEY,
        job_ids         TEXT NOT NULL DEFAULT '[]',
        idempotency_key TEXT,
        request_hash    TEXT,
        created_at      DOUBLE PRECISION NOT NULL,
        owner           TEXT
    );
    CREATE UNIQUE INDEX batches_idempotency ON batches (COALESCE(owner, ''), idempotency_key);
    -- Files in a node's output folder that a job produced or was saved as ("sub/name.png"):
    -- which node to fetch an image from, and which API key may read it.
    CREATE TABLE images (
        name    TEXT NOT NULL,
        job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        node    TEXT,
        PRIMARY KEY (name, job_id)
    );
    CREATE INDEX images_job ON images (job_id);
    -- Which node's ComfyUI holds an uploaded input image ("sub/name.png" in its input folder).
    CREATE TABLE uploads (
        name        TEXT PRIMARY KEY,
        node        TEXT NOT NULL,
        uploaded_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: the number ComfyUI gave the prompt (its run order: lower runs first), as in SQLite.
    """
    ALTER TABLE jobs ADD COLUMN queue_number DOUBLE PRECISION;
    """,
    # 3: the unfinished jobs alone, by node. What a claim counts (the jobs its node holds) and
    # what a submission counts (MAX_UNFINISHED_JOBS) are a few rows, where jobs_node and
    # jobs_status hold every job a node ever ran and every version of each row until vacuumed.
    """
    CREATE INDEX jobs_unfinished ON jobs (node) WHERE status IN ('queued', 'processing');
    """,
)


def migrate(url: str) -> int:
    """Bring the schema to the newest version, under an advisory lock: several nodes starting
    at once do not race (the others wait, then find nothing left to do)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (0)")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                with conn.transaction():
                    conn.execute(script)
                    conn.execute("UPDATE schema_version SET version = %s", (number,))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return len(MIGRATIONS)
