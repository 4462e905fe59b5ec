-- Let a span's end be a HOT update: no index may cover a column the end changes (`ended_at`,
-- `status`, `attrs`), so the open-span index goes (the finish and the rescue find a job's open
-- spans through `spans_job_idx`) and the export queue is keyed on what the end leaves alone.
-- Room on each page keeps the new row version beside the old one.
DROP INDEX IF EXISTS spans_open_idx;
DROP INDEX IF EXISTS spans_unexported_idx;
CREATE INDEX spans_unexported_idx ON spans (started_at) WHERE exported_at IS NULL;
ALTER TABLE spans SET (fillfactor = 80);
