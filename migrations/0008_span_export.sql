-- OTLP export of stored spans (src/trace/otlp.rs). A background exporter in each process claims
-- ended, unexported spans with `FOR UPDATE SKIP LOCKED`, sends them, and stamps `exported_at` in
-- the same transaction, so a span is exported once across the fleet and kept until it is.
-- Adding a nullable column without a default rewrites nothing, however big `spans` is.

ALTER TABLE spans ADD COLUMN exported_at timestamptz;

-- The exporter's queue: exactly its predicate, ordered the way it drains (oldest end first).
-- Spans leave the index as they are exported, so it stays small while export keeps up.
CREATE INDEX spans_unexported_idx ON spans (ended_at)
    WHERE ended_at IS NOT NULL AND exported_at IS NULL;
