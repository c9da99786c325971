-- The analysis's latency distributions over each whole recording (HDR
-- histograms, three significant digits), written when the recording ends:
-- one row per channel and per (channel, sender, receiver) for message
-- latency (`what` 'message' and 'pair'), per waited-on object for wait
-- durations ('wait'), and per (sender, target, signal) for signal latency
-- ('signal', `receiver_pid` the target). A recording that was killed has
-- none; `messages`, `waits` and `signals` still hold every value.
CREATE TABLE latency (
    id           INTEGER PRIMARY KEY,
    session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    what         TEXT    NOT NULL CHECK (what IN ('message', 'pair', 'wait', 'signal')),
    channel_id   INTEGER REFERENCES channels(id),
    sender_pid   INTEGER,
    receiver_pid INTEGER,
    signo        INTEGER,
    count        INTEGER NOT NULL,
    min_ns       INTEGER NOT NULL,
    p50_ns       INTEGER NOT NULL,
    p90_ns       INTEGER NOT NULL,
    p99_ns       INTEGER NOT NULL,
    p999_ns      INTEGER NOT NULL,
    max_ns       INTEGER NOT NULL
);
CREATE INDEX latency_by_session ON latency(session_id, what);

PRAGMA user_version = 4;
