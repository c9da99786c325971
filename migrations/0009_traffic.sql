-- Per-second traffic of each channel: what `report`'s channels section
-- counts, kept apart from the raw rows it is counted from, so that a
-- session whose oldest `events` and `messages` were removed to keep the
-- file under `record --max-db-size` still reports its whole traffic.
--
-- `sends` and `receives` are the `msg_send` and `msg_recv` events on the
-- channel (`events.channel_id`); `messages`, `paired` and `bytes` are its
-- `messages` rows, those with both ends known (`latency_ns` not NULL),
-- and their `size`. The writer adds each transaction's share in that
-- transaction, so this table and the raw rows always agree while nothing
-- has been removed.
--
-- `second` is the CLOCK_MONOTONIC second of the event (`ts_ns / 1e9`,
-- rounded down) or of the message (when it was received, or sent when its
-- receiver is unknown): the stamps' own clock, like every `_ns` column,
-- so that the writer needs nothing but the stamp and the bucket never goes
-- negative for an event stamped before the session started (a process
-- followed with -p). The second since the session's start is
-- `second - sessions.start_mono_ns / 1000000000`, give or take the
-- fraction of a second the session started in.
CREATE TABLE traffic (
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    channel_id INTEGER NOT NULL REFERENCES channels(id),
    second     INTEGER NOT NULL,
    sends      INTEGER NOT NULL,
    receives   INTEGER NOT NULL,
    messages   INTEGER NOT NULL,
    paired     INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    PRIMARY KEY (session_id, channel_id, second)
) WITHOUT ROWID;

-- The sessions recorded before this table existed, counted from their rows
-- (one pass over each table; seconds per ten million events).
INSERT INTO traffic (session_id, channel_id, second, sends, receives, messages, paired, bytes)
SELECT session_id, channel_id, second,
       sum(sends), sum(receives), sum(messages), sum(paired), sum(bytes)
FROM (
    SELECT session_id, channel_id, ts_ns / 1000000000 AS second,
           sum(kind_code = 1) AS sends, sum(kind_code = 2) AS receives,
           0 AS messages, 0 AS paired, 0 AS bytes
    FROM events
    WHERE kind_code IN (1, 2) AND channel_id IS NOT NULL
    GROUP BY session_id, channel_id, second
    UNION ALL
    SELECT session_id, channel_id, coalesce(received_ns, sent_ns, 0) / 1000000000 AS second,
           0, 0, count(*), count(latency_ns), coalesce(sum(size), 0)
    FROM messages
    GROUP BY session_id, channel_id, second
)
GROUP BY session_id, channel_id, second;

PRAGMA user_version = 9;
