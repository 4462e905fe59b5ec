-- Leave room on each jobs page so the frequent updates that touch no indexed column (the event
-- counter a running job bumps with every event write, progress, lease renewals) stay HOT: the
-- new row version goes on the same page and no index gets an entry. Without the room every such
-- update writes into every index on jobs, and a streaming job updates its row about 25 times a
-- second.
ALTER TABLE jobs SET (fillfactor = 70);
