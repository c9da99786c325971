-- What the correlation stage learns about channels: a kernel socket that
-- carries an ipc-lib channel (ipc-lib's socket transport) names it here.
-- Its traffic is that channel's, counted and paired there, so it has no
-- `messages` rows of its own; its raw events stay in `events`.
ALTER TABLE channels ADD COLUMN carries_channel_id INTEGER REFERENCES channels(id);

PRAGMA user_version = 6;
