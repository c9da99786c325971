//! What ipcscope has to tell its user while it runs (a note, a warning),
//! and where that goes: standard error, or, while a dashboard owns the
//! terminal, a file, so that nothing is written over the dashboard.
//!
//! The recorder's notes go through [`say`]; the CLI's log (tracing) writes
//! through [`Writer`].

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

static REDIRECT: Mutex<Option<File>> = Mutex::new(None);

fn redirect() -> MutexGuard<'static, Option<File>> {
    // A file handle cannot be left half-changed by a panic.
    REDIRECT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends every note to `file` from now on, until [`to_stderr`].
pub fn to_file(file: File) {
    *redirect() = Some(file);
}

/// Sends notes to standard error again.
pub fn to_stderr() {
    *redirect() = None;
}

/// [`say`] with `format!`'s arguments: the one way the recorder and the
/// CLI speak to their user.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::notes::say(format_args!($($arg)*))
    };
}

/// Writes one note, a line.
pub fn say(line: std::fmt::Arguments<'_>) {
    // A note that cannot be written is dropped: it must not take the
    // recording down. After a hangup stderr is often the dead terminal the
    // dashboard ran on (where `eprintln!` panics), and a recording ended by
    // that hangup still has its session to store and its status to exit
    // with.
    let _ = writeln!(Writer, "{line}");
}

/// Standard error, or the file notes go to meanwhile.
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match redirect().as_mut() {
            Some(file) => file.write(bytes),
            None => io::stderr().write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match redirect().as_mut() {
            Some(file) => file.flush(),
            None => io::stderr().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_go_to_the_file_while_one_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.log");
        to_file(File::create(&path).unwrap());
        say(format_args!("following {} processes", 3));
        to_stderr();
        say(format_args!("this one goes to stderr"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "following 3 processes\n"
        );
    }
}
