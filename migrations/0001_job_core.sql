-- The durable job core: tenants, API tokens, jobs, their event log, concurrency keys and the worker fleet.

CREATE TABLE projects (
    id             uuid PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    -- Signs outbound `http` job requests (HMAC-SHA256); never leaves the server.
    signing_secret bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    scope       text NOT NULL CHECK (scope IN ('admin', 'write', 'read')),
    -- SHA-256 of the secret token; the plain token is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE,
    -- The first characters of the token, so operators can tell tokens apart.
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TYPE job_state AS ENUM ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled');

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    project_id          uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind                text NOT NULL,
    queue               text NOT NULL DEFAULT 'default',
    args                jsonb NOT NULL,
    -- Higher runs first.
    priority            smallint NOT NULL DEFAULT 0,
    state               job_state NOT NULL DEFAULT 'queued',
    run_at              timestamptz NOT NULL DEFAULT now(),
    attempt             integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    timeout_s           integer CHECK (timeout_s > 0),
    lease_token         uuid,
    lease_expires_at    timestamptz,
    worker_id           text,
    concurrency_key     text,
    parent_id           uuid,
    root_id             uuid,
    idempotency_key     text,
    cancel_requested_at timestamptz,
    result              jsonb,
    error               jsonb,
    progress            jsonb,
    -- Highest event seq written for this job; bumped under the row lock so seq order is commit order.
    last_seq            bigint NOT NULL DEFAULT 0,
    -- Children still pending while this job is `waiting`.
    pending_children    integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    CHECK ((state = 'running') = (lease_token IS NOT NULL))
);

-- Matches the claim predicate for jobs without a concurrency key exactly.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL;
-- The head of each concurrency key's FIFO.
CREATE INDEX jobs_keyed_queued_idx ON jobs (project_id, concurrency_key, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_project_idx ON jobs (project_id, id DESC);
CREATE INDEX jobs_project_state_idx ON jobs (project_id, state, id DESC);
CREATE INDEX jobs_project_kind_idx ON jobs (project_id, kind, id DESC);
CREATE INDEX jobs_parent_idx ON jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency_idx ON jobs (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per concurrency key; `holder` is the job that is running or waiting for it.
CREATE TABLE job_keys (
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key        text NOT NULL,
    holder     uuid,
    PRIMARY KEY (project_id, key)
);

CREATE TABLE job_events (
    -- No foreign key: every insert happens in a statement that already holds the job row, and an RI
    -- trigger per event would sit on the hottest path. Pruning deletes events with their job.
    job_id uuid NOT NULL,
    seq    bigint NOT NULL,
    kind   text NOT NULL,
    data   jsonb NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE workers (
    id                text PRIMARY KEY,
    host              text NOT NULL,
    pid               integer NOT NULL,
    version           text NOT NULL,
    queues            text[] NOT NULL,
    concurrency       integer NOT NULL,
    running           integer NOT NULL DEFAULT 0,
    state             text NOT NULL DEFAULT 'running',
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);
