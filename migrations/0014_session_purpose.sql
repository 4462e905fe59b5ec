-- Sessions that are not chats a person opened: a subagent's hidden session and a workflow step's.
-- Listings of chats leave them out; they stay readable by id (the subagent transcript page).
ALTER TABLE sessions ADD COLUMN purpose text NOT NULL DEFAULT 'chat'
    CHECK (purpose IN ('chat', 'subagent', 'workflow_step'));
UPDATE sessions SET purpose = 'subagent' WHERE parent_session_id IS NOT NULL;
UPDATE sessions SET purpose = 'workflow_step' WHERE purpose = 'chat' AND title = 'workflow step'
    AND EXISTS (SELECT 1 FROM messages m JOIN jobs j ON j.id = m.turn_id
                WHERE m.session_id = sessions.id AND j.kind = 'workflow.step');
