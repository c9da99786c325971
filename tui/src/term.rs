//! The terminal's raw mode and alternate screen, undone however the
//! dashboard ends: on drop, on panic (before the message prints, so it is
//! readable), and on Ctrl-C (which raw mode delivers as a key).
//!
//! The saved state lives in one process-wide slot because the panic hook,
//! which cannot reach the guard, must restore it too; whichever of drop and
//! hook runs first restores, the other finds the slot empty.
//!
//! [`Keyboard`] watches the terminal the keys come from, so a terminal
//! that goes away (a closed window, a dropped ssh session) ends the
//! dashboard instead of wedging crossterm's reader.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

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

/// The terminal crossterm reads keys from, watched with `poll(2)`.
///
/// Crossterm 0.29 must never read a terminal that has hung up: its reader
/// retries a read that returns end-of-file (or EIO) at once and forever,
/// inside `event::poll`, so the dashboard spins at full CPU and never gets
/// back to its loop (crossterm-rs/crossterm#793). A hung-up terminal reads
/// as end-of-file for good, so the loop asks [`Keyboard::wait`] first and
/// hands crossterm the terminal only while it is still there.
///
/// What is left is a hangup while crossterm is inside its read: within
/// microseconds of a key, or while it blocks for the rest of an escape
/// sequence it has begun (an Alt+[ and then nothing). Only crossterm can
/// close that (an open pull request upstream would: crossterm-rs/crossterm#1067).
pub(crate) struct Keyboard {
    tty: OwnedFd,
}

/// What [`Keyboard::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyboardState {
    /// Nothing to read yet (or a signal cut the wait short).
    Quiet,
    /// Bytes are waiting to be read.
    Ready,
    /// The terminal hung up: nothing will ever be typed on it again.
    HungUp,
}

impl Keyboard {
    /// The terminal crossterm reads: standard input if it is one, else
    /// `/dev/tty` (crossterm's own choice, so both watch the same one).
    pub(crate) fn open() -> io::Result<Self> {
        let tty = match io::stdin().is_terminal() {
            true => io::stdin().as_fd().try_clone_to_owned()?,
            false => File::open("/dev/tty")?.into(),
        };
        Ok(Keyboard::new(tty))
    }

    /// Watches `tty`.
    pub(crate) fn new(tty: OwnedFd) -> Self {
        Keyboard { tty }
    }

    /// Waits at most `timeout` for bytes to read or a hangup; a hangup
    /// wins over bytes still waiting, since reading them could reach the
    /// end-of-file crossterm cannot handle.
    pub(crate) fn wait(&self, timeout: Duration) -> io::Result<KeyboardState> {
        self.poll(libc::POLLIN, timeout)
    }

    /// Waits at most `timeout` for a hangup only, for when bytes are
    /// waiting that crossterm will not take yet: it reads at most 1 KiB at
    /// a time and then waits for more to arrive, so watching them would
    /// only wake at once, again and again, until more come.
    pub(crate) fn wait_for_hangup(&self, timeout: Duration) -> io::Result<KeyboardState> {
        self.poll(0, timeout)
    }

    fn poll(&self, events: libc::c_short, timeout: Duration) -> io::Result<KeyboardState> {
        // A hangup and errors are reported whatever `events` asks for.
        let mut fds = [libc::pollfd {
            fd: self.tty.as_raw_fd(),
            events,
            revents: 0,
        }];
        // Rounded up: a wait cut to 0 ms would return at once, and the
        // caller would ask again and again until its deadline.
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is one valid pollfd for the duration of the call,
        // and the fd stays open as long as `self`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(KeyboardState::Quiet),
                _ => Err(e),
            };
        }
        let revents = fds[0].revents;
        Ok(
            if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                KeyboardState::HungUp
            } else if revents & libc::POLLIN != 0 {
                KeyboardState::Ready
            } else {
                KeyboardState::Quiet
            },
        )
    }
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
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A real pseudo-terminal: (master, slave).
    pub(crate) fn pty() -> (File, File) {
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

    #[test]
    fn the_keyboard_tells_keys_from_a_hangup() {
        let (mut master, slave) = pty();
        let keyboard = Keyboard::new(slave.as_fd().try_clone_to_owned().unwrap());
        assert_eq!(keyboard.wait(Duration::ZERO).unwrap(), KeyboardState::Quiet);
        // A whole line: the slave is not in raw mode, so a lone key would
        // wait in the line discipline.
        master.write_all(b"q\n").unwrap();
        assert_eq!(
            keyboard.wait(Duration::from_secs(5)).unwrap(),
            KeyboardState::Ready
        );
        assert_eq!(
            keyboard.wait_for_hangup(Duration::ZERO).unwrap(),
            KeyboardState::Quiet,
            "a byte waiting is not a hangup"
        );
        // Closing the master is what a terminal emulator, tmux or sshd
        // does when its window or session goes.
        drop(master);
        assert_eq!(
            keyboard.wait(Duration::from_secs(5)).unwrap(),
            KeyboardState::HungUp,
            "the byte still unread must not hide the hangup"
        );
        // For good: every later look sees it too.
        assert_eq!(
            keyboard.wait(Duration::ZERO).unwrap(),
            KeyboardState::HungUp
        );
        assert_eq!(
            keyboard.wait_for_hangup(Duration::ZERO).unwrap(),
            KeyboardState::HungUp
        );
    }
}
