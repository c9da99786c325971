-- Messages found by time through spans of their ids, not through two
-- indexes on `messages` (issue 16: the indexes by receipt and by send
-- were 16 of a message row's 55 bytes an event, and two of its four
-- b-tree inserts).
--
-- The writer inserts a commit's messages in the order the correlation
-- stage paired them, close to the order of their receipt. A span is a
-- run of consecutive ids whose times, by send (`by_received` 0) or by
-- receipt (1), lie within one second, at most 1,024 of them:
-- `to_ns - from_ns` is less than 1,000,000,000, always (the readers rely
-- on it), and the spans of one
-- session and kind cover disjoint ids. The messages of a time slice are
-- those of the spans that overlap it, read by id range and filtered by
-- time again: a span starting after the slice's end, or more than a
-- second before its start, cannot hold one. A message without a time of
-- that kind (an end not traced) is in no span of it.
CREATE TABLE message_spans (
    session_id  INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    by_received INTEGER NOT NULL,
    from_ns     INTEGER NOT NULL,
    to_ns       INTEGER NOT NULL,
    first_id    INTEGER NOT NULL,
    last_id     INTEGER NOT NULL
);
CREATE INDEX message_spans_by_time ON message_spans(session_id, by_received, from_ns);

-- Spans of the messages already stored: runs of ids within one second
-- (the same second, counted from 0) of each kind of time, cut every 1,024
-- ids as the writer cuts them (a reader reads a whole span).
INSERT INTO message_spans (session_id, by_received, from_ns, to_ns, first_id, last_id)
SELECT session_id, by_received, min(t), max(t), min(id), max(id)
FROM (
    SELECT session_id, by_received, id, t, run,
           (id - first_value(id) OVER (PARTITION BY session_id, by_received, run ORDER BY id))
               / 1024 AS part
    FROM (
    SELECT session_id, by_received, id, t,
           sum(new_run) OVER (PARTITION BY session_id, by_received ORDER BY id) AS run
    FROM (
        SELECT session_id, by_received, id, t,
               CASE WHEN t / 1000000000 = lag(t / 1000000000)
                             OVER (PARTITION BY session_id, by_received ORDER BY id)
                    THEN 0 ELSE 1 END AS new_run
        FROM (SELECT session_id, 0 AS by_received, id, sent_ns AS t FROM messages
              WHERE sent_ns IS NOT NULL
              UNION ALL
              SELECT session_id, 1, id, received_ns FROM messages
              WHERE received_ns IS NOT NULL)
    )
    )
)
GROUP BY session_id, by_received, run, part;

DROP INDEX messages_by_session_received;
DROP INDEX messages_by_session_sent;

-- The views of the events a message row holds gain the row's id,
-- `message_id`, for the spans to join on; `events` names its columns.
DROP VIEW events;
DROP VIEW message_sends;
DROP VIEW message_receives;

CREATE VIEW message_sends AS
SELECT (1 << 40) + 2 * id AS id, session_id, sent_ns AS ts_ns, sender_pid AS pid,
       sender_tid AS tid, send_source_code AS source_code, 1 AS kind_code, channel_id, size,
       msg_id, coalesce(send_result, size) AS result, send_duration_ns AS duration_ns,
       coalesce(send_aux, 0) AS aux, send_payload AS payload,
       CASE send_source_code WHEN 1 THEN 'lib' WHEN 2 THEN 'ebpf' WHEN 3 THEN 'collector'
       ELSE 'unknown' END AS source,
       'msg_send' AS kind, id AS message_id
FROM messages WHERE ends & 1;

CREATE VIEW message_receives AS
SELECT (1 << 40) + 2 * id + 1 AS id, session_id, received_ns AS ts_ns,
       receiver_pid AS pid, receiver_tid AS tid, recv_source_code AS source_code,
       2 AS kind_code, channel_id, size, msg_id, coalesce(recv_result, size) AS result,
       recv_duration_ns AS duration_ns, coalesce(recv_aux, 0) AS aux,
       recv_payload AS payload,
       CASE recv_source_code WHEN 1 THEN 'lib' WHEN 2 THEN 'ebpf' WHEN 3 THEN 'collector'
       ELSE 'unknown' END AS source,
       'msg_recv' AS kind, id AS message_id
FROM messages WHERE ends & 2;

CREATE VIEW events AS
SELECT id, session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, size, msg_id,
       result, duration_ns, aux, payload, source, kind
FROM event_rows
UNION ALL
SELECT id, session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, size, msg_id,
       result, duration_ns, aux, payload, source, kind
FROM message_sends
UNION ALL
SELECT id, session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, size, msg_id,
       result, duration_ns, aux, payload, source, kind
FROM message_receives;

PRAGMA user_version = 11;
