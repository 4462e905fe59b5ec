-- Suspend and resume (ARCHITECTURE §2), and background subagents on top of it.
--
-- A job suspends to `waiting` on a set of its children: `wait_for` names them, `pending_children`
-- (from 0001) counts how many more must finish before it is queued again (all of them, or one
-- for "any"), and `wait_until` bounds the wait. Every finish of a child takes its parent's row
-- lock, so a suspend and a child's completion are serialised on the parent and no wake-up is lost.
ALTER TABLE jobs
    ADD COLUMN wait_for uuid[],
    ADD COLUMN wait_until timestamptz;
-- Waits that run out are requeued by the maintenance loop.
CREATE INDEX jobs_wait_until_idx ON jobs (wait_until) WHERE state = 'waiting';

-- A subagent runs in a hidden session of its own, filed under the visible chat session at the
-- root of its tree (whatever its depth), so the session's usage and lists include it.
ALTER TABLE sessions ADD COLUMN parent_session_id uuid REFERENCES sessions (id) ON DELETE CASCADE;
CREATE INDEX sessions_parent_idx ON sessions (parent_session_id) WHERE parent_session_id IS NOT NULL;

-- One row per subagent (its id is its `agent.subagent` job's id): what it was asked, what became of
-- it, and whether its result has reached a turn of the parent session.
CREATE TABLE subagents (
    id                uuid PRIMARY KEY,
    project_id        uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- The session whose turn (or subagent) spawned it, and that job.
    session_id        uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    parent_job_id     uuid NOT NULL,
    -- The visible chat session at the root of the tree.
    root_session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    hidden_session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    depth             integer NOT NULL CHECK (depth >= 1),
    label             text,
    prompt            text NOT NULL,
    model             text NOT NULL,
    tools             text[] NOT NULL,
    budget_tokens     bigint,
    -- queued | running | succeeded | failed | cancelled | budget_exhausted
    status            text NOT NULL DEFAULT 'queued',
    summary           text,
    output            text,
    input_tokens      bigint NOT NULL DEFAULT 0,
    output_tokens     bigint NOT NULL DEFAULT 0,
    cost_usd          double precision NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    -- The turn that received the result (by a tool, or as a notice in its context).
    collected_by      uuid
);
CREATE INDEX subagents_session_idx ON subagents (session_id, id);
CREATE INDEX subagents_root_idx ON subagents (root_session_id, id);
CREATE INDEX subagents_parent_idx ON subagents (parent_job_id);
