-- A finished session's replay index: the state a replay shows at each
-- position of its timeline (every 100 ms, coarser for long sessions, each
-- deadlock or drop, the end), computed once when the recording ends, so
-- that a replay opens complete however big the session. `state` is JSON:
-- a whole `Snapshot` where `keyframe` is 1, else a `Delta` on the state at
-- the position before; both without their recent events, which are read
-- from `events` when shown. `version` is the format's: a replay ignores an
-- index of another version (and indexes the session itself), as it does a
-- session without one (recorded by an older ipcscope, or cut short).
CREATE TABLE replay_index (
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    at_ns      INTEGER NOT NULL,
    keyframe   INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL,
    PRIMARY KEY (session_id, position)
);

PRAGMA user_version = 8;
