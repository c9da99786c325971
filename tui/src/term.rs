//! The terminal's raw mode and alternate screen, undone however the
//! dashboard ends: on drop, on panic (before the message prints, so it is
//! readable), and on Ctrl-C (which raw mode delivers as a key).
//!
//! The saved state lives in one process-wide slot because the panic hook,
//! which cannot reach the guard, must restore it too; whichever of drop and
//! hook runs first restores, the other finds the slot empty.

use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Mutex, MutexGuard, Once};

use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};

/// What to put back: the terminal and its settings before raw mode.
struct Saved {
    tty: File,
    termios: libc::termios,
}

static SAVED: Mutex<Option<Saved>> = Mutex::new(None);

fn saved() -> MutexGuard<'static, Option<Saved>> {
    // A panic while the lock was held must not stop the restore.
    SAVED.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Raw mode and the alternate screen on a terminal, until dropped.
#[derive(Debug)]
#[must_use = "the terminal is restored when the guard is dropped"]
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// Puts the terminal behind `tty` (stdout, usually) in raw mode on the
    /// alternate screen, and installs the panic hook that undoes it.
    pub fn enter(tty: impl AsFd) -> io::Result<Self> {
        let mut slot = saved();
        if slot.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the terminal is already in use by another TerminalGuard",
            ));
        }
        let mut tty = File::from(tty.as_fd().try_clone_to_owned()?);
        let termios = get_termios(&tty).map_err(|e| {
            io::Error::new(e.kind(), format!("the dashboard needs a terminal: {e}"))
        })?;
        let mut raw = termios;
        // SAFETY: `raw` is a valid, initialised termios; cfmakeraw only
        // rewrites its flag fields.
        unsafe { libc::cfmakeraw(&mut raw) };
        set_termios(&tty, &raw)?;
        if let Err(e) = execute!(tty, EnterAlternateScreen, Hide) {
            // Do not leave a half-set-up terminal behind.
            let _ = set_termios(&tty, &termios);
            return Err(e);
        }
        *slot = Some(Saved { tty, termios });
        drop(slot);
        install_panic_hook();
        Ok(TerminalGuard { _private: () })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back what [`TerminalGuard::enter`] changed, once. Errors are
/// ignored: this runs while unwinding or exiting, with no one to tell.
fn restore() {
    if let Some(mut s) = saved().take() {
        let _ = execute!(s.tty, LeaveAlternateScreen, Show);
        let _ = s.tty.flush();
        let _ = set_termios(&s.tty, &s.termios);
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

fn get_termios(tty: &File) -> io::Result<libc::termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: the fd is open for the life of `tty`, and tcgetattr writes a
    // whole termios into the pointer it is given on success.
    if unsafe { libc::tcgetattr(tty.as_raw_fd(), t.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr succeeded, so `t` is initialised.
    Ok(unsafe { t.assume_init() })
}

fn set_termios(tty: &File, t: &libc::termios) -> io::Result<()> {
    // SAFETY: the fd is open for the life of `tty` and `t` points to a
    // valid termios.
    if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSAFLUSH, t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A real pseudo-terminal: (master, slave).
    fn pty() -> (File, File) {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds into the pointers; name, termios
        // and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty succeeded; both fds are new and owned by nobody else.
        let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: setting O_NONBLOCK on an fd we own; reads then never hang.
        unsafe { libc::fcntl(m.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        (File::from(m), File::from(s))
    }

    fn drain(master: &mut File) -> String {
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn is_raw(tty: &File) -> bool {
        get_termios(tty).unwrap().c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG) == 0
    }

    // One test for all of it: the guard is process-wide, so parallel tests
    // would see each other's terminals.
    #[test]
    fn the_terminal_is_restored_on_drop_and_by_the_panic_hook() {
        let (mut master, slave) = pty();
        assert!(!is_raw(&slave));
        let before = get_termios(&slave).unwrap().c_lflag;

        let guard = TerminalGuard::enter(&slave).unwrap();
        assert!(is_raw(&slave), "ISIG off: Ctrl-C arrives as a key");
        assert!(
            drain(&mut master).contains("\x1b[?1049h"),
            "alternate screen"
        );
        let second = TerminalGuard::enter(&slave).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AlreadyExists);
        drop(guard);
        assert_eq!(get_termios(&slave).unwrap().c_lflag, before);
        assert!(
            drain(&mut master).contains("\x1b[?1049l"),
            "main screen back"
        );

        // A panic where the guard's destructor never runs (as with
        // panic = "abort"): the hook alone must restore.
        let guard = TerminalGuard::enter(&slave).unwrap();
        std::mem::forget(guard);
        let panicked = std::panic::catch_unwind(|| panic!("boom"));
        assert!(panicked.is_err());
        assert_eq!(get_termios(&slave).unwrap().c_lflag, before);
        assert!(drain(&mut master).contains("\x1b[?1049l"));

        // Not a terminal: a clear error, nothing changed.
        let err = TerminalGuard::enter(File::open("/dev/null").unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs a terminal"), "{err}");
        assert!(saved().is_none());
    }
}
