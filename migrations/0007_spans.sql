-- Traces: one span per job attempt (written by the claim and ended by the finish or rescue, in the
-- same statements), and child spans for each LLM call and tool call, written by the handler under
-- its lease fence. Ids follow W3C trace context: 32 and 16 lowercase hex digits.

ALTER TABLE jobs
    ADD COLUMN trace_id text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '')
        CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    -- The span the job was created under (a caller's `traceparent`, or the spawning step).
    ADD COLUMN parent_span_id text CHECK (parent_span_id ~ '^[0-9a-f]{16}$');

CREATE TABLE spans (
    trace_id       text NOT NULL CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    span_id        text NOT NULL CHECK (span_id ~ '^[0-9a-f]{16}$'),
    parent_span_id text CHECK (parent_span_id ~ '^[0-9a-f]{16}$'),
    project_id     uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    job_id         uuid,
    attempt        integer,
    -- The chat session, for a turn's spans.
    session_id     uuid,
    kind           text NOT NULL
        CHECK (kind IN ('job', 'llm', 'tool', 'step', 'subagent', 'workflow', 'http')),
    name           text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    status         text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'ok', 'error', 'cancelled', 'abandoned')),
    attrs          jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX spans_job_idx ON spans (job_id, started_at);
CREATE INDEX spans_session_idx ON spans (project_id, session_id, started_at DESC, span_id)
    WHERE session_id IS NOT NULL;
-- Open spans, for ending a job's span and abandoning a lapsed attempt's.
CREATE INDEX spans_open_idx ON spans (job_id) WHERE ended_at IS NULL;
