-- Messages by when they were received: a replay reads a session's
-- messages a time slice at a time, and without this each slice scanned
-- every message of the session (a 10-million-event replay never ended).
CREATE INDEX messages_by_session_received ON messages(session_id, received_ns);

PRAGMA user_version = 7;
