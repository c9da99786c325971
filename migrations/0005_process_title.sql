-- Two event kinds more (see ipc_events::raw::kind::PROCESS_TITLE and
-- FUTEX_WAIT_BEGIN): `process_title`, a process that renamed itself
-- (prctl(PR_SET_NAME)) or rewrote its command line (`postgres:
-- checkpointer`), and `futex_wait_begin`, a futex wait that began (until
-- now a `futex_wait` whose result was a marker no call returns; 0006
-- rewrites those rows). As in 0003, the
-- readable `kind` column is generated from `kind_code`, so it is dropped
-- and added again with the new name; VIRTUAL columns are computed on
-- read, so no row is rewritten.
ALTER TABLE events DROP COLUMN kind;
ALTER TABLE events ADD COLUMN kind TEXT GENERATED ALWAYS AS (
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
        WHEN 21 THEN 'recv_wait_begin'
        WHEN 22 THEN 'recv_wait_end'
        WHEN 23 THEN 'process_title'
        WHEN 24 THEN 'futex_wait_begin'
        ELSE 'unknown' END) VIRTUAL;

PRAGMA user_version = 5;
