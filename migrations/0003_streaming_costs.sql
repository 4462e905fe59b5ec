-- Cheaper streaming: uncompressed message text and set-based stream numbering.

-- A streaming reply rewrites its message every ~250 ms; compressing that growing text each time
-- cost more CPU than the bytes it saved. Store it out of line, uncompressed.
ALTER TABLE messages ALTER COLUMN content SET STORAGE EXTERNAL;

-- Batched event writers number stream events themselves (one grouped update per stream); the
-- trigger now serves only writers that leave `stream_seq` unset.
DROP TRIGGER job_events_stream_seq ON job_events;
CREATE TRIGGER job_events_stream_seq BEFORE INSERT ON job_events
    FOR EACH ROW WHEN (NEW.stream_id IS NOT NULL AND NEW.stream_seq IS NULL)
    EXECUTE FUNCTION job_events_stream_seq();
