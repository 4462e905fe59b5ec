-- Workflow scripts (src/workflow/): uploaded files, runs, the per-run step journal and the step
-- cache shared by the runs of one workflow in one project.

-- Scripts uploaded over REST (`PUT /api/v1/workflows/{name}`); the built-ins and the `workflows/`
-- directory are read from code and disk.
CREATE TABLE workflow_files (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    source      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- One row per run; its id is its `workflow.run` job's id. The source is copied at start, so a
-- later upload cannot change what a replay of this run executes.
CREATE TABLE workflow_runs (
    id             uuid PRIMARY KEY,
    project_id     uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    workflow       text NOT NULL,
    source         text NOT NULL,
    args           jsonb NOT NULL,
    budget_total   bigint NOT NULL CHECK (budget_total > 0),
    seed           bigint NOT NULL,
    -- 0 for a run started over REST; 1 for a run started by `workflow()` (the deepest allowed).
    depth          integer NOT NULL DEFAULT 0,
    workspace      text,
    -- How many of the script's `log`/`phase` events are already in the job's log (replays
    -- produce them again; only the new ones are written).
    events_emitted integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_runs_project_idx ON workflow_runs (project_id, id);

-- The journal: every step a run reached, by its position (branch path and sequence number), with
-- the step key recorded there (a replay reaching another key is non-deterministic), and where its
-- result comes from: a child job of this run, or the cache (`cached`, result copied here).
CREATE TABLE workflow_steps (
    run_id       uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    position     text NOT NULL,
    step_key     text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('agent', 'workflow', 'sleep')),
    label        text,
    phase        text,
    job_id       uuid,
    cached       boolean NOT NULL DEFAULT false,
    result       jsonb,
    wake_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (run_id, position)
);

-- Completed steps' results, reused by later runs of the same workflow with the same inputs.
CREATE TABLE workflow_cache (
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    workflow   text NOT NULL,
    step_key   text NOT NULL,
    result     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, workflow, step_key)
);
