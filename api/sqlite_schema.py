"""The embedded store's schema: the migrations that build it, one per version (SQLite)."""

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
    """
    -- The outbox: webhooks and uploads each job owes (api/delivery.py)
    CREATE TABLE deliveries (
        id              TEXT PRIMARY KEY,  -- a webhook's webhook-id, the same on every retry
        job_id          TEXT NOT NULL,
        kind            TEXT NOT NULL,     -- webhook, upload
        event           TEXT NOT NULL,     -- job.completed, job.progress... or upload
        target          TEXT NOT NULL,     -- the webhook URL, or the upload's object key
        payload         TEXT NOT NULL DEFAULT '{}',
        state           TEXT NOT NULL,     -- pending, delivered, failed, superseded
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_at      REAL NOT NULL,
        expires_at      REAL NOT NULL,     -- no retry is scheduled past this
        next_attempt_at REAL,
        last_attempt_at REAL,
        last_status     INTEGER,
        last_error      TEXT,
        delivered_at    REAL,
        lease_owner     TEXT,              -- the claim's token while an attempt runs
        lease_until     REAL
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
    CREATE INDEX deliveries_job ON deliveries (job_id, created_at);
    -- JSON: the output images uploaded to object storage, [{"index", "key"}]
    ALTER TABLE jobs ADD COLUMN objects TEXT NOT NULL DEFAULT '[]';
    """,
    """
    CREATE TABLE batches (
        id              TEXT PRIMARY KEY,
        job_ids         TEXT NOT NULL DEFAULT '[]',  -- JSON, in submission order
        idempotency_key TEXT UNIQUE,
        request_hash    TEXT,
        created_at      REAL NOT NULL
    );
    """,
    """
    -- The name of the API key that created the job (NULL: made without API keys). Keys see
    -- their own jobs only, and an Idempotency-Key is unique per API key, not across keys.
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    CREATE INDEX jobs_owner ON jobs (owner, status, created_at);
    DROP INDEX jobs_idempotency;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(owner, ''), idempotency_key);
    -- Files in the output folder that a job produced or was saved as, by their name relative
    -- to it ("subfolder/file.png"): a key may download and list only its own jobs' files.
    CREATE TABLE job_files (
        name   TEXT NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (name, job_id)
    );
    CREATE INDEX job_files_job ON job_files (job_id);
    -- Batches get an owner too, and their Idempotency-Key becomes unique per API key: SQLite
    -- cannot drop a column's UNIQUE, so the table is rebuilt (batches are few and small).
    CREATE TABLE batches_owned (
        id              TEXT PRIMARY KEY,
        job_ids         TEXT NOT NULL DEFAULT '[]',  -- JSON, in submission order
        idempotency_key TEXT,
        request_hash    TEXT,
        created_at      REAL NOT NULL,
        owner           TEXT               -- the API key that made it, as for jobs
    );
    INSERT INTO batches_owned (id, job_ids, idempotency_key, request_hash, created_at)
        SELECT id, job_ids, idempotency_key, request_hash, created_at FROM batches;
    DROP TABLE batches;
    ALTER TABLE batches_owned RENAME TO batches;
    CREATE UNIQUE INDEX batches_idempotency ON batches (COALESCE(owner, ''), idempotency_key);
    """,
    # 8: the jobs changed since a time (the status files' sweeps, api/status_docs.py) without
    # reading the whole table.
    """
    CREATE INDEX jobs_updated ON jobs (updated_at);
    """,
    # 9: the number ComfyUI gave the prompt (its run order: lower runs first), so a pass can
    # rank the queue's places itself when ComfyUI holds only this sidecar's prompts.
    """
    ALTER TABLE jobs ADD COLUMN queue_number REAL;
    """,
)
