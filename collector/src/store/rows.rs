//! Reading and writing many rows fast: statements run through SQLite's C
//! API on a sqlx connection's own handle. sqlx copies every value of every
//! row it hands out (`sqlite3_value_dup`, an allocation each, freed on
//! another thread): replaying a session spent 12 µs an event there. Going
//! in, it boxes every argument and hands each statement to its worker
//! thread: the writer ran at a third of the speed of the same INSERTs
//! bound in place. Here values are read and bound in place; sqlx still
//! opens, owns and closes the connection, and its transactions hold.

use std::ffi::{c_int, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;

use super::StoreError;

/// A prepared statement with its parameters bound, stepped a row at a
/// time; it borrows the locked connection for as long as it lives.
pub(crate) struct Rows<'h> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: NonNull<ffi::sqlite3>,
    what: &'static str,
    _handle: PhantomData<&'h mut ()>,
}

impl<'h> Rows<'h> {
    /// Prepares `sql` on `handle` and binds `params` to `?1`, `?2`, ...;
    /// `what` names the read in errors.
    pub(crate) fn new(
        handle: &'h mut LockedSqliteHandle<'_>,
        what: &'static str,
        sql: &str,
        params: &[i64],
    ) -> Result<Rows<'h>, StoreError> {
        let rows = Rows::prepare(handle, what, sql)?;
        for (i, &value) in params.iter().enumerate() {
            rows.int_at(i as c_int + 1, Some(value))?;
        }
        Ok(rows)
    }

    /// Prepares `sql` on `handle`, to be bound (`int_at`, `blob_at`) and
    /// run (`execute`) as often as needed; `what` names it in errors.
    pub(crate) fn prepare(
        handle: &'h mut LockedSqliteHandle<'_>,
        what: &'static str,
        sql: &str,
    ) -> Result<Rows<'h>, StoreError> {
        let db = handle.as_raw_handle();
        let text = CString::new(sql).map_err(|_| error(what, "a NUL byte in the statement"))?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `db` is the locked connection's open handle; `text` is
        // NUL-terminated and outlives the call; `stmt` receives the
        // statement, which Drop finalizes.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                text.as_ptr(),
                -1,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let Some(stmt) = NonNull::new(stmt).filter(|_| rc == ffi::SQLITE_OK) else {
            return Err(error(what, &last_error(db)));
        };
        Ok(Rows {
            stmt,
            db,
            what,
            _handle: PhantomData,
        })
    }

    /// Binds parameter `i` (from 1) to an integer, or NULL.
    pub(crate) fn int_at(&self, i: c_int, value: Option<i64>) -> Result<(), StoreError> {
        // SAFETY: a live statement; an index out of range is an error
        // code, not undefined behaviour.
        let rc = unsafe {
            match value {
                Some(v) => ffi::sqlite3_bind_int64(self.stmt.as_ptr(), i, v),
                None => ffi::sqlite3_bind_null(self.stmt.as_ptr(), i),
            }
        };
        self.check(rc)
    }

    /// Binds parameter `i` (from 1) to bytes, or NULL. SQLite copies them
    /// (SQLITE_TRANSIENT), so they need not outlive the call.
    pub(crate) fn blob_at(&self, i: c_int, value: Option<&[u8]>) -> Result<(), StoreError> {
        let Some(bytes) = value else {
            return self.int_at(i, None);
        };
        // SAFETY: a live statement; `bytes` is valid for its length during
        // the call and SQLITE_TRANSIENT makes SQLite copy it before returning.
        let rc = unsafe {
            ffi::sqlite3_bind_blob(
                self.stmt.as_ptr(),
                i,
                bytes.as_ptr().cast(),
                bytes.len() as c_int,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc)
    }

    /// Runs a statement that returns no rows (an INSERT), then readies it
    /// to be bound and run again.
    pub(crate) fn execute(&mut self) -> Result<(), StoreError> {
        // SAFETY: a live statement, stepped and reset by its one owner;
        // bindings survive the reset, and are all rebound before each run.
        let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
        let reset = unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
        match rc {
            ffi::SQLITE_DONE => self.check(reset),
            _ => Err(error(self.what, &last_error(self.db))),
        }
    }

    fn check(&self, rc: c_int) -> Result<(), StoreError> {
        match rc {
            ffi::SQLITE_OK => Ok(()),
            _ => Err(error(self.what, &last_error(self.db))),
        }
    }

    /// Moves to the next row; `false` when there is none.
    pub(crate) fn next(&mut self) -> Result<bool, StoreError> {
        // SAFETY: a live statement, stepped by its one owner.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(error(self.what, &last_error(self.db))),
        }
    }

    /// Column `i` of the current row as an integer; `None` for NULL.
    pub(crate) fn int(&self, i: c_int) -> Option<i64> {
        // SAFETY: a live statement on a row (`next` returned true); an
        // index past the columns reads as NULL.
        unsafe {
            match ffi::sqlite3_column_type(self.stmt.as_ptr(), i) {
                ffi::SQLITE_NULL => None,
                _ => Some(ffi::sqlite3_column_int64(self.stmt.as_ptr(), i)),
            }
        }
    }

    /// Column `i` of the current row as bytes; `None` for NULL.
    pub(crate) fn bytes(&self, i: c_int) -> Option<Vec<u8>> {
        // SAFETY: as in `int`. The pointer is SQLite's, valid until the
        // next step, and `sqlite3_column_bytes` (called after it, as
        // SQLite asks) gives its length; the bytes are copied out at once.
        unsafe {
            if ffi::sqlite3_column_type(self.stmt.as_ptr(), i) == ffi::SQLITE_NULL {
                return None;
            }
            let data = ffi::sqlite3_column_blob(self.stmt.as_ptr(), i).cast::<u8>();
            let len = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), i).max(0) as usize;
            Some(match data.is_null() {
                true => Vec::new(),
                false => std::slice::from_raw_parts(data, len).to_vec(),
            })
        }
    }
}

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared by `new` and is finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The rowid of the last row inserted on `handle`'s connection: with the
/// number of rows a multi-row INSERT made, the ids it gave them (SQLite
/// gives each new row the largest rowid plus one, so one statement's rows,
/// and one transaction's, have consecutive ids).
pub(crate) fn last_insert_rowid(handle: &mut LockedSqliteHandle<'_>) -> i64 {
    // SAFETY: the locked connection's open handle, used by this thread
    // alone while the lock is held.
    unsafe { ffi::sqlite3_last_insert_rowid(handle.as_raw_handle().as_ptr()) }
}

fn last_error(db: NonNull<ffi::sqlite3>) -> String {
    // SAFETY: an open handle; the message is SQLite's, NUL-terminated and
    // valid until the next call on the handle, and copied at once.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

fn error(action: &'static str, message: &str) -> StoreError {
    StoreError::Sql {
        action,
        error: sqlx::Error::Protocol(message.to_owned()),
    }
}
