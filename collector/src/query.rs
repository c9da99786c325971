//! `ipcscope query`: user SQL against a recording, read-only.
//!
//! Results keep SQLite's dynamic types (a column can hold integers in one
//! row and text in the next), so values are decoded by their storage class
//! per cell, not by the declared column type.

use std::fmt::Write as _;

use futures_util::TryStreamExt;
use serde_json::{Map, Value as Json};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Executor, Row, SqliteConnection, TypeInfo, ValueRef};

use crate::store::{describe_sql, StoreError};

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A whole result set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// One line: the database's message, not repeated by a source chain.
    #[error("query failed: {}", describe_sql(.0))]
    Sql(sqlx::Error),
    #[error("query failed: {0}: `query` only reads the recording; ATTACH, VACUUM INTO, setting a pragma and loading extensions are refused")]
    Refused(String),
    #[error("query failed: its statements return rows with different columns; run one statement at a time")]
    Shapes,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs SQL and collects its rows. Several statements are run in turn;
/// their rows make one table only if they have the same columns (a
/// table's rows all have its columns), else it is an error, never rows
/// labelled with another statement's names.
///
/// `conn` is read-only (see [`crate::store::Store::read_only`]); before any
/// of the user's SQL runs, an authorizer also keeps it from writing
/// anywhere else.
pub async fn run(conn: &mut SqliteConnection, sql: &str) -> Result<Table, QueryError> {
    only_reads(conn).await?;
    let mut table = Table::default();
    let mut rows = sqlx::raw_sql(sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.map_err(sql_error)? {
        let columns: Vec<String> = row.columns().iter().map(|c| c.name().to_owned()).collect();
        if table.rows.is_empty() {
            table.columns = columns;
        } else if columns != table.columns {
            return Err(QueryError::Shapes);
        }
        table.rows.push(decode_row(&row).map_err(sql_error)?);
    }
    drop(rows);
    if table.columns.is_empty() {
        // No rows to read names from: ask SQLite what the columns would
        // have been. Statements that return nothing have none to tell.
        if let Ok(described) = conn.describe(sql).await {
            table.columns = described
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
        }
    }
    Ok(table)
}

fn sql_error(e: sqlx::Error) -> QueryError {
    // SQLITE_AUTH: the authorizer below said no.
    const SQLITE_AUTH: &str = "23";
    match e.as_database_error() {
        Some(db) if db.code().as_deref() == Some(SQLITE_AUTH) => {
            QueryError::Refused(db.message().to_owned())
        }
        _ => QueryError::Sql(e),
    }
}

/// A read-only connection still writes other files: `ATTACH` creates the
/// database it names (read-only applies to the main one only, as sqlx
/// opens it), `VACUUM INTO` copies the recording anywhere, and some pragmas
/// set paths. SQLite asks this authorizer about every action of every
/// statement as it is prepared, so each such statement fails before it
/// runs; whatever else would write fails on the read-only connection.
async fn only_reads(conn: &mut SqliteConnection) -> Result<(), QueryError> {
    use libsqlite3_sys as ffi;
    use std::ffi::{c_char, c_int, c_void, CStr};

    unsafe extern "C" fn authorize(
        _: *mut c_void,
        action: c_int,
        first: *const c_char,
        second: *const c_char,
        _: *const c_char,
        _: *const c_char,
    ) -> c_int {
        let refused = match action {
            // VACUUM INTO attaches its output first.
            ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => true,
            // A pragma with a value sets something, but for those whose
            // argument names what to describe; without, it reads.
            ffi::SQLITE_PRAGMA => {
                const DESCRIBING: [&[u8]; 6] = [
                    b"table_info",
                    b"table_xinfo",
                    b"table_list",
                    b"index_list",
                    b"index_info",
                    b"index_xinfo",
                ];
                // SAFETY: for SQLITE_PRAGMA the first argument is the
                // pragma's name, NUL-terminated, owned by SQLite for the
                // length of this call.
                let name = (!first.is_null()).then(|| unsafe { CStr::from_ptr(first) }.to_bytes());
                !second.is_null()
                    && !name.is_some_and(|n| DESCRIBING.iter().any(|d| n.eq_ignore_ascii_case(d)))
            }
            ffi::SQLITE_FUNCTION => {
                // SAFETY: for SQLITE_FUNCTION the second argument is the
                // function's name, a NUL-terminated string SQLite owns for
                // the length of this call.
                !second.is_null()
                    && unsafe { CStr::from_ptr(second) }
                        .to_bytes()
                        .eq_ignore_ascii_case(b"load_extension")
            }
            _ => false,
        };
        if refused {
            ffi::SQLITE_DENY
        } else {
            ffi::SQLITE_OK
        }
    }

    let mut handle = conn.lock_handle().await.map_err(QueryError::Sql)?;
    // SAFETY: the handle is this connection's open sqlite3, locked for
    // the call; `authorize` is a plain function that keeps no state, so it
    // outlives the connection, and needs no user data.
    let rc = unsafe {
        ffi::sqlite3_set_authorizer(
            handle.as_raw_handle().as_ptr(),
            Some(authorize),
            std::ptr::null_mut(),
        )
    };
    match rc {
        ffi::SQLITE_OK => Ok(()),
        code => Err(QueryError::Sql(sqlx::Error::Protocol(format!(
            "cannot install the read-only authorizer (SQLite code {code})"
        )))),
    }
}

/// A table from rows already fetched (empty rows give no column names).
pub fn from_rows(rows: &[SqliteRow]) -> Result<Table, sqlx::Error> {
    Ok(Table {
        columns: rows.first().map_or_else(Vec::new, |r| {
            r.columns().iter().map(|c| c.name().to_owned()).collect()
        }),
        rows: rows.iter().map(decode_row).collect::<Result<_, _>>()?,
    })
}

pub(crate) fn decode_row(row: &SqliteRow) -> Result<Vec<Value>, sqlx::Error> {
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            Ok(match raw.type_info().name() {
                "INTEGER" => Value::Integer(row.try_get(i)?),
                "REAL" => Value::Real(row.try_get(i)?),
                "BLOB" => Value::Blob(row.try_get(i)?),
                _ => Value::Text(row.try_get(i)?),
            })
        })
        .collect()
}

impl Value {
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Integer(i) => Json::from(*i),
            Value::Real(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Value::Text(s) => Json::String(s.clone()),
            Value::Blob(b) => Json::String(hex(b)),
        }
    }

    /// The cell as plain text: NULL empty, blobs as an SQL hex literal.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Integer(i) => i.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Text(s) => s.clone(),
            Value::Blob(b) => format!("x'{}'", hex(b)),
        }
    }
}

/// `text` with white space folded to a space and every other control
/// character (C0, DEL, C1: what a terminal takes as a command) written as
/// a `\u{..}` escape.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Table {
    /// One JSON array of objects keyed by column name, columns in order.
    pub fn to_json(&self) -> String {
        Json::Array(self.to_json_rows()).to_string()
    }

    /// Each row as a JSON object keyed by column name.
    pub fn to_json_rows(&self) -> Vec<Json> {
        self.rows
            .iter()
            .map(|row| {
                let obj: Map<String, Json> = self
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().map(Value::to_json))
                    .collect();
                Json::Object(obj)
            })
            .collect()
    }

    /// RFC 4180 CSV with a header row.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = String>| {
            let quoted: Vec<String> = cells.map(|c| csv_field(&c)).collect();
            out.push_str(&quoted.join(","));
            out.push_str("\r\n");
        };
        line(&mut self.columns.iter().cloned());
        for row in &self.rows {
            line(&mut row.iter().map(Value::to_text));
        }
        out
    }

    /// An aligned text table for a terminal: numbers right-aligned, text
    /// left, NULL blank. Text from a recording is another process's (a
    /// command line, a name a program gave itself), so control characters
    /// are shown escaped, never sent to the terminal.
    pub fn to_aligned(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|v| printable(&v.to_text())).collect())
            .collect();
        let columns: Vec<String> = self.columns.iter().map(|c| printable(c)).collect();
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..self.columns.len())
            .map(|i| {
                // Humanised figures ("1.2 ms") read best right-aligned too.
                self.rows.iter().all(|r| match &r[i] {
                    Value::Integer(_) | Value::Real(_) | Value::Null => true,
                    Value::Text(t) => t.starts_with(|c: char| c.is_ascii_digit()),
                    Value::Blob(_) => false,
                })
            })
            .collect();
        let mut out = String::new();
        let emit = |row: &[String], out: &mut String| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if numeric[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        emit(&columns, &mut out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        emit(&rule, &mut out);
        for row in &cells {
            emit(row, &mut out);
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sqlx::Connection;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any number of statements with any columns: one table when they
        /// agree on their columns, a clear error when not; never a panic,
        /// never rows under another statement's names, whatever the output
        /// format.
        #[test]
        fn statements_of_any_shape_make_one_table_or_an_error(
            shapes in proptest::collection::vec(
                proptest::collection::vec(0u8..3, 1..5), 1..5),
        ) {
            let sql: Vec<String> = shapes
                .iter()
                .enumerate()
                .map(|(i, cols)| {
                    let cols: Vec<String> = cols
                        .iter()
                        .enumerate()
                        .map(|(j, name)| format!("{} AS c{name}_{j}", i * 10 + j))
                        .collect();
                    format!("SELECT {}", cols.join(", "))
                })
                .collect();
            let sql = sql.join("; ");
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let result = runtime.block_on(async {
                let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
                run(&mut conn, &sql).await
            });
            let same = shapes.windows(2).all(|w| w[0] == w[1]);
            match result {
                Ok(table) => {
                    prop_assert!(same, "{sql}");
                    prop_assert_eq!(table.rows.len(), shapes.len());
                    prop_assert!(table.rows.iter().all(|r| r.len() == table.columns.len()));
                    let _ = (table.to_aligned(), table.to_csv(), table.to_json());
                }
                Err(QueryError::Shapes) => prop_assert!(!same, "{sql}"),
                Err(other) => prop_assert!(false, "{sql}: {other}"),
            }
        }
    }

    #[test]
    fn a_terminal_gets_no_control_character_from_a_recording() {
        let hostile = "\x1b]0;pwned\x07\u{9b}2J name\u{7f}";
        let table = Table {
            columns: vec![format!("c{hostile}")],
            rows: vec![vec![Value::Text(hostile.into())]],
        };
        let text = table.to_aligned();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains(r"\u{1b}]0;pwned\u{7}\u{9b}2J name\u{7f}"),
            "{text}"
        );
    }

    fn table() -> Table {
        Table {
            columns: vec!["kind".into(), "n".into()],
            rows: vec![
                vec![Value::Text("pipe".into()), Value::Integer(12)],
                vec![Value::Text("a,\"b\"".into()), Value::Null],
            ],
        }
    }

    #[test]
    fn json_is_an_array_of_objects_in_column_order() {
        assert_eq!(
            table().to_json(),
            r#"[{"kind":"pipe","n":12},{"kind":"a,\"b\"","n":null}]"#
        );
        assert_eq!(Table::default().to_json(), "[]");
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        assert_eq!(
            table().to_csv(),
            "kind,n\r\npipe,12\r\n\"a,\"\"b\"\"\",\r\n"
        );
    }

    #[test]
    fn aligned_table_right_aligns_numbers() {
        assert_eq!(
            table().to_aligned(),
            "kind    n\n-----  --\npipe   12\na,\"b\"\n"
        );
    }
}
