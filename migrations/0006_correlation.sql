-- What the correlation stage learns beyond the raw events.
--
-- A kernel socket that carries an ipc-lib channel (ipc-lib's socket
-- transport) names it: its traffic is that channel's, counted and paired
-- there, so it has no `messages` rows of its own; its raw events stay in
-- `events`.
ALTER TABLE channels ADD COLUMN carries_channel_id INTEGER REFERENCES channels(id);

-- A signal the kernel sent (a timer, a child's end, a fault, a write to a
-- closed pipe) has no sender_pid; `cause` says why it came: 'timer',
-- 'child', 'fault', 'pipe' or 'kernel'. NULL for a signal a process sent.
ALTER TABLE signals ADD COLUMN cause TEXT;

-- The title a process gave itself after it started (prctl(PR_SET_NAME),
-- or rewriting its argv as servers do: `postgres: checkpointer`), the
-- latest one, and when it took it.
ALTER TABLE processes ADD COLUMN title TEXT;
ALTER TABLE processes ADD COLUMN title_ns INTEGER;

PRAGMA user_version = 6;
