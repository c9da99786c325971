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

-- Lock-order inversions: `first` held while `second` was taken by
-- first_pid (first seen at first_seen_ns), and `second` held while `first`
-- was taken by second_pid (second_seen_ns, when the inversion was found).
-- A deadlock waiting for the wrong interleaving, even when the recording
-- never hung.
CREATE TABLE lock_order_inversions (
    id                INTEGER PRIMARY KEY,
    session_id        INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    first_channel_id  INTEGER REFERENCES channels(id),
    second_channel_id INTEGER REFERENCES channels(id),
    first_pid         INTEGER NOT NULL,
    second_pid        INTEGER NOT NULL,
    first_seen_ns     INTEGER NOT NULL,
    second_seen_ns    INTEGER NOT NULL
);
CREATE INDEX lock_order_inversions_by_session ON lock_order_inversions(session_id);

-- No marker in a stored column: a futex wait's begin was a `futex_wait`
-- row whose result was i64::MIN (no call returns it); it is a
-- `futex_wait_begin` now, with no result yet (0).
UPDATE events SET kind_code = 24, result = 0
WHERE kind_code = 10 AND result = -9223372036854775808;

PRAGMA user_version = 6;
