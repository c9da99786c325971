-- A message's send and receive events are stored in its `messages` row,
-- not as `events` rows of their own beside it: a paired message was
-- three rows and five index entries, and is one row and three entries
-- now (issue 16: 89 bytes an event, and the writer's bound).
--
-- The raw events table is `event_rows`; `events` is a view with the same
-- columns, the rows of `event_rows` and, for each `messages` row that
-- holds its ends' events, a `msg_send` and/or a `msg_recv` row made from
-- it. What users SELECT from `events` answers as before.
--
-- `ends` says which of the message's events the row holds: bit 1 its
-- send, bit 2 its receive (the correlation stage folds an event in only
-- when the row reproduces it exactly; a receive that took several
-- messages, or part of one, stays an `event_rows` row). Each end's
-- columns that are not the message's own: its source, its call's
-- duration, and its result, aux and payload where they are not the
-- usual (the size, 0, none: NULL then, so that a row stays small).
-- (Its index keeps its name, `events_by_session_time`: SQLite cannot
-- rename an index, and building it again would read every row.)
ALTER TABLE events RENAME TO event_rows;
ALTER TABLE messages ADD COLUMN ends INTEGER;
ALTER TABLE messages ADD COLUMN send_source_code INTEGER;
ALTER TABLE messages ADD COLUMN send_duration_ns INTEGER;
ALTER TABLE messages ADD COLUMN send_result INTEGER;
ALTER TABLE messages ADD COLUMN send_aux INTEGER;
ALTER TABLE messages ADD COLUMN send_payload BLOB;
ALTER TABLE messages ADD COLUMN recv_source_code INTEGER;
ALTER TABLE messages ADD COLUMN recv_duration_ns INTEGER;
ALTER TABLE messages ADD COLUMN recv_result INTEGER;
ALTER TABLE messages ADD COLUMN recv_aux INTEGER;
ALTER TABLE messages ADD COLUMN recv_payload BLOB;
-- The view's send rows by time, as `events_by_session_time` has the
-- others (a replay reads events a time slice at a time).
CREATE INDEX messages_by_session_sent ON messages(session_id, sent_ns);

-- The events a message row holds, one view per end. Their ids are past
-- any `event_rows` id (2^40 + twice the message's id, + 1 for the
-- receive): unique and stable, but in time order only within each view.
CREATE VIEW message_sends AS
SELECT (1 << 40) + 2 * id AS id, session_id, sent_ns AS ts_ns, sender_pid AS pid,
       sender_tid AS tid, send_source_code AS source_code, 1 AS kind_code, channel_id, size,
       msg_id, coalesce(send_result, size) AS result, send_duration_ns AS duration_ns,
       coalesce(send_aux, 0) AS aux, send_payload AS payload,
       CASE send_source_code WHEN 1 THEN 'lib' WHEN 2 THEN 'ebpf' WHEN 3 THEN 'collector'
       ELSE 'unknown' END AS source,
       'msg_send' AS kind
FROM messages WHERE ends & 1;

CREATE VIEW message_receives AS
SELECT (1 << 40) + 2 * id + 1 AS id, session_id, received_ns AS ts_ns,
       receiver_pid AS pid, receiver_tid AS tid, recv_source_code AS source_code,
       2 AS kind_code, channel_id, size, msg_id, coalesce(recv_result, size) AS result,
       recv_duration_ns AS duration_ns, coalesce(recv_aux, 0) AS aux,
       recv_payload AS payload,
       CASE recv_source_code WHEN 1 THEN 'lib' WHEN 2 THEN 'ebpf' WHEN 3 THEN 'collector'
       ELSE 'unknown' END AS source,
       'msg_recv' AS kind
FROM messages WHERE ends & 2;

CREATE VIEW events AS
SELECT id, session_id, ts_ns, pid, tid, source_code, kind_code, channel_id, size, msg_id,
       result, duration_ns, aux, payload, source, kind
FROM event_rows
UNION ALL SELECT * FROM message_sends
UNION ALL SELECT * FROM message_receives;

PRAGMA user_version = 10;
