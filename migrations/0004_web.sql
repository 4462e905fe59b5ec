-- The web pages: the key that signs browser sessions, one-time sign-in links, and the indexes the
-- dashboards read through.

-- One row: every `spool serve` node signs and checks cookies with the same key.
CREATE TABLE web_keys (
    id         smallint PRIMARY KEY CHECK (id = 1),
    cookie_key bytea NOT NULL CHECK (length(cookie_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One-time sign-in links (printed by `spool dev`); only a SHA-256 of the code is kept.
CREATE TABLE web_login_codes (
    code_hash  bytea PRIMARY KEY,
    token_id   uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

-- Throughput over the last minutes, per project.
CREATE INDEX jobs_project_finished_idx ON jobs (project_id, finished_at)
    WHERE finished_at IS NOT NULL;
