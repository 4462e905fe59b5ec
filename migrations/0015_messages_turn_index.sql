-- A turn's messages by turn: a retried attempt drops its streaming leftovers, a rollback removes
-- the turn, and a turn's first user message is looked up by it. Without this index each of those
-- read the whole transcript table (one scan per turn start).
CREATE INDEX messages_turn_idx ON messages (turn_id);
