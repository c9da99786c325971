//! Keys turned into actions: the only place that knows the key bindings, so
//! the help screen and the handling cannot disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::app::Screen;

/// Everything a user can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    NextScreen,
    PrevScreen,
    GoTo(Screen),
    ToggleHelp,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Drill down into the selected row: its channel or event, else a
    /// process it names.
    Enter,
    /// Open a process the selected row names (offering a list when it
    /// names several), even where Enter opens a channel or an event.
    OpenProcess,
    /// Leave the drill-down, the help or the filter.
    Back,
    /// Live: freeze the screen (frames still drain). Replay: play/pause.
    TogglePause,
    StartFilter,
    FilterChar(char),
    FilterBackspace,
    FilterCommit,
    NextSort,
    ReverseSort,
    /// Switch the latency window shown in tables (1 s, 10 s, session).
    NextWindow,
    Faster,
    Slower,
    /// Move the replay cursor by this many seconds.
    Seek(i32),
    SeekStart,
    SeekEnd,
    /// Move the replay cursor to the next / previous deadlock or drop.
    NextMark,
    PreviousMark,
}

/// What changes the meaning of a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyContext {
    /// The filter line is being typed: printable keys are text.
    pub editing_filter: bool,
    /// A replay is shown: the timeline keys apply.
    pub replay: bool,
}

/// Seconds one `[` or `]` moves the replay cursor; left/right move one.
pub const BIG_SEEK_S: i32 = 10;

/// The action for a key, if it has one.
pub fn map_key(key: KeyEvent, ctx: KeyContext) -> Option<Action> {
    // Releases and repeats are reported only on some terminals; acting on
    // presses alone makes every terminal behave the same.
    if key.kind != KeyEventKind::Press {
        return None;
    }
    // Raw mode turns Ctrl-C into a key: it must always quit, even mid-filter.
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if ctx.editing_filter {
        return match key.code {
            KeyCode::Enter => Some(Action::FilterCommit),
            KeyCode::Esc => Some(Action::Back),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    let action = match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Tab => Action::NextScreen,
        KeyCode::BackTab => Action::PrevScreen,
        KeyCode::Char(c @ '1'..='6') => Action::GoTo(Screen::ALL[usize::from(c as u8 - b'1')]),
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Enter => Action::Enter,
        KeyCode::Char('o') => Action::OpenProcess,
        KeyCode::Esc | KeyCode::Backspace => Action::Back,
        KeyCode::Char('p') => Action::TogglePause,
        KeyCode::Char(' ') if ctx.replay => Action::TogglePause,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('s') => Action::NextSort,
        KeyCode::Char('r') => Action::ReverseSort,
        KeyCode::Char('w') => Action::NextWindow,
        KeyCode::Home if ctx.replay => Action::SeekStart,
        KeyCode::End if ctx.replay => Action::SeekEnd,
        KeyCode::Home => Action::Top,
        KeyCode::End => Action::Bottom,
        KeyCode::Char('+' | '=') if ctx.replay => Action::Faster,
        KeyCode::Char('-') if ctx.replay => Action::Slower,
        KeyCode::Left if ctx.replay => Action::Seek(-1),
        KeyCode::Right if ctx.replay => Action::Seek(1),
        KeyCode::Char('[') if ctx.replay => Action::Seek(-BIG_SEEK_S),
        KeyCode::Char(']') if ctx.replay => Action::Seek(BIG_SEEK_S),
        KeyCode::Char('n') if ctx.replay => Action::NextMark,
        KeyCode::Char('N') if ctx.replay => Action::PreviousMark,
        _ => return None,
    };
    Some(action)
}

/// The key bindings as the help screen lists them.
pub fn help(replay: bool) -> Vec<(&'static str, &'static str)> {
    let mut lines = vec![
        ("Tab / S-Tab / 1-6", "switch screen"),
        ("Up Down j k", "move the selection"),
        ("PgUp PgDn", "move by a page"),
        ("Home End", "move to the first / last row"),
        (
            "Enter / Esc",
            "open the row's channel or event, else a process / back",
        ),
        ("o", "open a process the row names (a list if several)"),
        ("/", "filter: pid:N comm:X kind:X chan:X or text"),
        ("s / r", "sort channels by the next column / reverse"),
        ("w", "latency window: 1 s, 10 s, session"),
        ("p", "pause the display (the feed keeps draining)"),
        ("?", "this help"),
        ("q / Ctrl-C", "quit"),
    ];
    if replay {
        lines.remove(3);
        lines.splice(
            // Replace the live pause line; Home and End seek instead.
            8..9,
            [
                ("p / Space", "play or pause the replay"),
                ("+ / -", "replay faster / slower"),
                ("Left Right", "seek one second"),
                ("[ ]", "seek ten seconds"),
                ("Home End", "seek to the start / end"),
                ("n / N", "next / previous deadlock (◆) or drop (!)"),
            ],
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn ctrl_c_quits_even_while_typing_a_filter() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        for editing_filter in [false, true] {
            let ctx = KeyContext {
                editing_filter,
                replay: false,
            };
            assert_eq!(map_key(ctrl_c, ctx), Some(Action::Quit));
        }
    }

    #[test]
    fn typing_a_filter_makes_letters_text() {
        let ctx = KeyContext {
            editing_filter: true,
            replay: false,
        };
        assert_eq!(
            map_key(key(KeyCode::Char('q')), ctx),
            Some(Action::FilterChar('q'))
        );
        assert_eq!(
            map_key(key(KeyCode::Enter), ctx),
            Some(Action::FilterCommit)
        );
    }

    #[test]
    fn o_opens_a_process_unless_it_is_filter_text() {
        let o = key(KeyCode::Char('o'));
        assert_eq!(map_key(o, KeyContext::default()), Some(Action::OpenProcess));
        let typing = KeyContext {
            editing_filter: true,
            replay: false,
        };
        assert_eq!(map_key(o, typing), Some(Action::FilterChar('o')));
    }

    #[test]
    fn timeline_keys_only_act_in_a_replay() {
        let live = KeyContext::default();
        let replay = KeyContext {
            replay: true,
            ..live
        };
        assert_eq!(map_key(key(KeyCode::Right), live), None);
        assert_eq!(map_key(key(KeyCode::Right), replay), Some(Action::Seek(1)));
        assert_eq!(
            map_key(key(KeyCode::Char('[')), replay),
            Some(Action::Seek(-BIG_SEEK_S))
        );
        assert_eq!(map_key(key(KeyCode::Home), live), Some(Action::Top));
        assert_eq!(map_key(key(KeyCode::Home), replay), Some(Action::SeekStart));
        assert_eq!(map_key(key(KeyCode::Char(' ')), live), None);
    }

    #[test]
    fn releases_are_ignored() {
        let mut k = key(KeyCode::Char('q'));
        k.kind = KeyEventKind::Release;
        assert_eq!(map_key(k, KeyContext::default()), None);
    }

    #[test]
    fn help_lists_the_timeline_only_in_a_replay() {
        let has_seek = |replay| help(replay).iter().any(|(k, _)| *k == "[ ]");
        assert!(!has_seek(false));
        assert!(has_seek(true));
        let keys = |replay| -> Vec<&str> { help(replay).iter().map(|(k, _)| *k).collect() };
        assert!(keys(false).contains(&"p") && keys(false).contains(&"Home End"));
        assert!(!keys(true).contains(&"p"), "p plays a replay instead");
        assert_eq!(
            keys(true).iter().filter(|k| k.contains("Home")).count(),
            1,
            "Home and End listed once, as seeks"
        );
    }
}
