-- ipcscope schema, version 1. The table and column names here are a contract
-- with users and their scripts (see README "Schema"); later migrations may add
-- columns and tables but never rename or repurpose these.
--
-- Timestamps ending in _ns are CLOCK_MONOTONIC nanoseconds, the clock the
-- kernel probes stamp events with; sessions.start_mono_ns/started_at relate
-- them to wall-clock time.

CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    name          TEXT,
    command       TEXT    NOT NULL,  -- shell-quoted argv
    host          TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,  -- RFC 3339, UTC
    ended_at      TEXT,              -- NULL while recording, or if the recorder died
    exit_status   INTEGER,           -- the command's status; 128+N if killed by signal N
    sources       TEXT    NOT NULL,  -- comma-separated: ebpf, lib
    start_mono_ns INTEGER NOT NULL,
    end_mono_ns   INTEGER,
    event_count   INTEGER NOT NULL DEFAULT 0,
    recorder_pid  INTEGER NOT NULL
);

CREATE TABLE processes (
    id          INTEGER PRIMARY KEY,
    session_id  INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    pid         INTEGER NOT NULL,
    ppid        INTEGER,
    comm        TEXT,
    exe         TEXT,
    started_ns  INTEGER,
    exited_ns   INTEGER,
    exit_status INTEGER
);
CREATE INDEX processes_by_session ON processes(session_id, pid);

CREATE TABLE channels (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    UNIQUE (session_id, kind, name)
);

-- The hot table. No foreign keys here: each one is a lookup per inserted
-- row, and the single writer guarantees the ids it writes exist. `source`
-- and `kind` are stored as the small integer codes of ipc_events and read
-- as text through VIRTUAL generated columns: users query the names, rows
-- stay small, and an insert binds no strings.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    session_id  INTEGER NOT NULL,
    ts_ns       INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    tid         INTEGER NOT NULL,
    source_code INTEGER NOT NULL,
    kind_code   INTEGER NOT NULL,
    channel_id  INTEGER,
    size        INTEGER NOT NULL,
    msg_id      INTEGER,
    result      INTEGER NOT NULL,
    duration_ns INTEGER,
    aux         INTEGER NOT NULL,
    payload     BLOB,                -- only with --payload-bytes
    source      TEXT GENERATED ALWAYS AS (
        CASE source_code WHEN 1 THEN 'lib' WHEN 2 THEN 'ebpf' WHEN 3 THEN 'collector'
        ELSE 'unknown' END) VIRTUAL,
    kind        TEXT GENERATED ALWAYS AS (
        CASE kind_code
            WHEN 1 THEN 'msg_send'
            WHEN 2 THEN 'msg_recv'
            WHEN 3 THEN 'shm_map'
            WHEN 4 THEN 'shm_unmap'
            WHEN 5 THEN 'shm_read'
            WHEN 6 THEN 'shm_write'
            WHEN 7 THEN 'sem_wait_begin'
            WHEN 8 THEN 'sem_wait_end'
            WHEN 9 THEN 'sem_post'
            WHEN 10 THEN 'futex_wait'
            WHEN 11 THEN 'futex_wake'
            WHEN 12 THEN 'lock_acquire'
            WHEN 13 THEN 'lock_release'
            WHEN 14 THEN 'signal_generate'
            WHEN 15 THEN 'signal_deliver'
            WHEN 16 THEN 'signal_handle'
            WHEN 17 THEN 'process_start'
            WHEN 18 THEN 'process_exec'
            WHEN 19 THEN 'process_exit'
            WHEN 20 THEN 'drop'
            ELSE 'unknown' END) VIRTUAL
);
CREATE INDEX events_by_session_time ON events(session_id, ts_ns);

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    channel_id   INTEGER NOT NULL REFERENCES channels(id),
    msg_id       INTEGER,
    sender_pid   INTEGER,
    sender_tid   INTEGER,
    receiver_pid INTEGER,
    receiver_tid INTEGER,
    sent_ns      INTEGER,
    received_ns  INTEGER,
    latency_ns   INTEGER,
    size         INTEGER NOT NULL
);
CREATE INDEX messages_by_channel ON messages(session_id, channel_id);

CREATE TABLE waits (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    pid        INTEGER NOT NULL,
    tid        INTEGER NOT NULL,
    channel_id INTEGER REFERENCES channels(id),
    start_ns   INTEGER NOT NULL,
    end_ns     INTEGER,                -- NULL while still blocked
    waker_pid  INTEGER
);
CREATE INDEX waits_by_channel ON waits(session_id, channel_id);

CREATE TABLE signals (
    id           INTEGER PRIMARY KEY,
    session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    sender_pid   INTEGER,
    target_pid   INTEGER NOT NULL,
    signo        INTEGER NOT NULL,
    generated_ns INTEGER,
    delivered_ns INTEGER
);
CREATE INDEX signals_by_session ON signals(session_id);

CREATE TABLE deadlocks (
    id          INTEGER PRIMARY KEY,
    session_id  INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    detected_ns INTEGER NOT NULL,
    resolved_ns INTEGER,
    cycle       TEXT    NOT NULL       -- JSON: [{pid, tid, comm, waits_for}]
);
CREATE INDEX deadlocks_by_session ON deadlocks(session_id);

CREATE TABLE drops (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    source     TEXT    NOT NULL,       -- ebpf_ring | lib_ring | ingest | decode
    count      INTEGER NOT NULL,
    ts_ns      INTEGER NOT NULL
);
CREATE INDEX drops_by_session ON drops(session_id);

-- 'IPCS': lets ipcscope recognise its own files from the header alone,
-- before it opens anything for writing.
PRAGMA application_id = 1229996883;
-- Every migration ends by setting user_version to its own number, so the
-- header tells a file's schema version without reading a table.
PRAGMA user_version = 1;
