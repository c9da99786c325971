-- Where a running recording serves its live feed (see collector/src/live.rs),
-- so `ipcscope tui` and `report --live` can find it from the database alone.
-- NULL once the recording has ended, and for sessions recorded before this
-- column existed.
ALTER TABLE sessions ADD COLUMN live_socket TEXT;

PRAGMA user_version = 2;
