-- Blobs (src/store/): every blob is registered here before its bytes are written and removed
-- after them, so the orphan sweep can find blobs that nothing refers to any more.
CREATE TABLE blobs (
    key        text PRIMARY KEY,
    project_id uuid NOT NULL,
    -- Offloaded payloads: the job whose result, events or tool results may refer to the blob.
    job_id     uuid,
    size       bigint NOT NULL CHECK (size >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blobs_created_idx ON blobs (created_at, key);

-- Files a user uploaded to a chat session; the bytes are the blob `blob_key`.
CREATE TABLE attachments (
    id         uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name       text NOT NULL,
    media_type text NOT NULL,
    size       bigint NOT NULL CHECK (size >= 0),
    blob_key   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_session_idx ON attachments (session_id, id);
CREATE INDEX attachments_blob_idx ON attachments (blob_key);

-- Periodic duties every worker may run (orphan sweep, retention pruning): whoever moves
-- `next_at` forward runs that round, so a fleet runs each duty once per interval.
CREATE TABLE housekeeping (
    task    text PRIMARY KEY,
    next_at timestamptz NOT NULL
);
