-- Messages by when they were received: a replay reads a session's
-- messages a time slice at a time (without this, each slice scanned every
-- message of the session: a 10-million-event replay never ended), and a
-- channel's newest messages as of any moment (the drill-down's).
CREATE INDEX messages_by_session_received ON messages(session_id, received_ns);
DROP INDEX messages_by_channel;
CREATE INDEX messages_by_channel ON messages(session_id, channel_id, received_ns);

PRAGMA user_version = 7;
