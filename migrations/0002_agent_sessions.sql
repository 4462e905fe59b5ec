-- Event streams: a job may belong to a stream (a chat session); its events are then also numbered
-- in that stream, so one cursor resumes a reader across every job of the stream.

CREATE TABLE event_streams (
    id       uuid PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);

ALTER TABLE jobs ADD COLUMN stream_id uuid;
ALTER TABLE job_events ADD COLUMN stream_id uuid;
ALTER TABLE job_events ADD COLUMN stream_seq bigint;
CREATE UNIQUE INDEX job_events_stream_idx ON job_events (stream_id, stream_seq)
    WHERE stream_id IS NOT NULL;

-- Allocates the stream seq under the stream row's lock, so stream order is commit order, and
-- wakes the stream's live readers. Fires only for events of stream jobs.
CREATE FUNCTION job_events_stream_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_streams SET last_seq = last_seq + 1 WHERE id = NEW.stream_id
        RETURNING last_seq INTO NEW.stream_seq;
    IF NEW.stream_seq IS NULL THEN
        INSERT INTO event_streams (id, last_seq) VALUES (NEW.stream_id, 1)
            ON CONFLICT (id) DO UPDATE SET last_seq = event_streams.last_seq + 1
            RETURNING last_seq INTO NEW.stream_seq;
    END IF;
    PERFORM pg_notify('spool_events', NEW.stream_id::text);
    RETURN NEW;
END $$;

CREATE TRIGGER job_events_stream_seq BEFORE INSERT ON job_events
    FOR EACH ROW WHEN (NEW.stream_id IS NOT NULL) EXECUTE FUNCTION job_events_stream_seq();

-- Chat sessions. A session's id is also its event stream's id.
CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title         text,
    model         text NOT NULL,
    system_prompt text,
    workspace     text,
    -- Compaction: the summary of every message up to (and including) `summary_upto`.
    summary       text,
    summary_upto  uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_project_idx ON sessions (project_id, id DESC);

-- The transcript. Ordered by id (UUIDv7); a turn's messages share its job id.
CREATE TABLE messages (
    id           uuid PRIMARY KEY,
    session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id      uuid NOT NULL,
    role         text NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    -- user: {"text"}; assistant: {"text", "reasoning", "tool_calls": [...]};
    -- tool: {"tool_call_id", "name", "content", "is_error", "truncated", "data"}
    content      jsonb NOT NULL,
    status       text NOT NULL CHECK (status IN ('streaming', 'complete', 'cancelled', 'error')),
    -- Tool results are keyed by (turn, tool_call_id): a finished call is never run again.
    tool_call_id text,
    usage        jsonb,
    model        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_idx ON messages (session_id, id);
CREATE UNIQUE INDEX messages_tool_result_idx ON messages (turn_id, tool_call_id)
    WHERE tool_call_id IS NOT NULL;
