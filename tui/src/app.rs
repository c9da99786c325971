//! The dashboard's state, with no I/O: what is shown, what is selected, and
//! how frames from the feed and actions from the keyboard change it. The
//! run loop feeds it; the `ui` module draws it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use ipc_events::live::{
    ChannelStats, Frame, Latency, Percentiles, Rates, SignalStats, Snapshot, WaitStats,
    PROTOCOL_VERSION,
};
use ipc_events::Event;

use crate::action::{Action, KeyContext};
use crate::filter::{Fields, Filter, FilterError};
use crate::process::{self, Link};
use crate::timeline::Timeline;
use crate::timing::FrameTimes;

/// The screens, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Screen {
    Overview,
    Channels,
    Topology,
    Waits,
    Signals,
    Events,
}

impl Screen {
    /// Every screen, in Tab order.
    pub const ALL: [Screen; 6] = [
        Screen::Overview,
        Screen::Channels,
        Screen::Topology,
        Screen::Waits,
        Screen::Signals,
        Screen::Events,
    ];

    /// The screen's name in the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            Screen::Overview => "Overview",
            Screen::Channels => "Channels",
            Screen::Topology => "Topology",
            Screen::Waits => "Waits",
            Screen::Signals => "Signals",
            Screen::Events => "Events",
        }
    }

    /// The screen's position in [`Screen::ALL`].
    pub fn index(self) -> usize {
        Screen::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    fn step(self, by: isize) -> Screen {
        let n = Screen::ALL.len() as isize;
        Screen::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

/// The channel table's sort column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    MsgRate,
    ByteRate,
    P50,
    P99,
    Max,
    Queue,
    Messages,
    Name,
}

impl SortKey {
    /// Every sort column, in the order `s` cycles through them.
    pub const ALL: [SortKey; 8] = [
        SortKey::MsgRate,
        SortKey::ByteRate,
        SortKey::P50,
        SortKey::P99,
        SortKey::Max,
        SortKey::Queue,
        SortKey::Messages,
        SortKey::Name,
    ];

    /// The column's name in titles.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::MsgRate => "msg/s",
            SortKey::ByteRate => "bytes/s",
            SortKey::P50 => "p50",
            SortKey::P99 => "p99",
            SortKey::Max => "max",
            SortKey::Queue => "queue",
            SortKey::Messages => "messages",
            SortKey::Name => "name",
        }
    }
}

/// Which window the tables' rates and latencies cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Last1s,
    Last10s,
    Session,
}

impl Window {
    /// The window's name in titles.
    pub fn label(self) -> &'static str {
        match self {
            Window::Last1s => "1s",
            Window::Last10s => "10s",
            Window::Session => "session",
        }
    }

    fn next(self) -> Window {
        match self {
            Window::Last1s => Window::Last10s,
            Window::Last10s => Window::Session,
            Window::Session => Window::Last1s,
        }
    }

    /// The latency percentiles of this window.
    pub fn latency(self, l: &Latency) -> &Percentiles {
        match self {
            Window::Last1s => &l.last_1s,
            Window::Last10s => &l.last_10s,
            Window::Session => &l.session,
        }
    }

    /// A channel's rates over this window; the session's is its average
    /// over `elapsed_ns`.
    pub fn rates(self, c: &ChannelStats, elapsed_ns: u64) -> Rates {
        match self {
            Window::Last1s => c.rate_1s,
            Window::Last10s => c.rate_10s,
            // Nothing can be averaged over no time (a replay at its start).
            Window::Session if elapsed_ns == 0 => Rates::default(),
            Window::Session => {
                let secs = elapsed_ns as f64 / 1e9;
                Rates {
                    events_per_s: 0.0,
                    messages_per_s: c.messages as f64 / secs,
                    bytes_per_s: c.bytes as f64 / secs,
                }
            }
        }
    }
}

/// Where the live feed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// No snapshot yet.
    Waiting,
    /// Snapshots are arriving (or, in a replay, loading).
    Running,
    /// The recording ended ([`Frame::End`]).
    Ended { exit_status: Option<i32> },
    /// The feed went away without an end frame.
    Lost,
}

/// A live feed that cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(
        "the live feed speaks protocol version {got}, this dashboard version {PROTOCOL_VERSION}"
    )]
    /// The feed speaks another protocol version.
    Version { got: u32 },
    #[error("the live feed sent a delta before its first snapshot")]
    /// A delta came with no snapshot to apply it to.
    DeltaBeforeSnapshot,
}

/// One sender -> receiver pair over one channel: a topology edge.
#[derive(Clone, Copy, Debug)]
pub struct Edge<'a> {
    /// The sending process.
    pub from: u32,
    /// The receiving process.
    pub to: u32,
    /// What they talk through; its volumes are the whole channel's.
    pub channel: &'a ChannelStats,
}

/// A process a row names, offered when it names several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub pid: u32,
    /// What it is to the row: `sender`, `holder`, ... (several, joined,
    /// when the row names it more than once).
    pub role: String,
}

/// The processes the selected row names, while the user picks one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    pub choices: Vec<Choice>,
    pub selected: usize,
}

/// A process view open, and its selected row.
#[derive(Clone, Copy, Debug)]
struct Opened {
    pid: u32,
    selected: usize,
}

/// The whole dashboard state.
#[derive(Debug)]
pub struct App {
    snapshot: Option<Snapshot>,
    /// What a paused live display keeps showing while `snapshot` moves on.
    frozen: Option<Snapshot>,
    feed: FeedState,
    replay: Option<Timeline>,
    /// The cursor position of the replay snapshot shown.
    loaded_ns: Option<u64>,
    /// The replay position whose load is under way.
    loading_ns: Option<u64>,
    /// How far the replay source has loaded, while it still loads.
    reach_ns: Option<u64>,
    screen: Screen,
    selected: [usize; Screen::ALL.len()],
    /// The event log sticks to the newest event until the user scrolls.
    follow_events: bool,
    sort: SortKey,
    reversed: bool,
    window: Window,
    filter: Filter,
    filter_text: String,
    filter_input: Option<String>,
    filter_error: Option<FilterError>,
    help: bool,
    detail: Option<i64>,
    /// The event opened on the Events screen.
    event_detail: Option<Event>,
    /// Process views opened, the one shown last: one from another's row
    /// stacks on it, and Esc goes back one. Only the pid is kept, so the
    /// view follows it into every new snapshot.
    opened: Vec<Opened>,
    /// The processes offered for opening, while the user picks one.
    pick: Option<Pick>,
    /// A message for the user that is not fatal (a replay load failure).
    status: Option<String>,
    quit: bool,
    page: usize,
    /// How long recent redraws took; the run loop records into it.
    pub frame_times: FrameTimes,
}

impl App {
    /// A dashboard waiting for a live feed's first snapshot.
    pub fn live() -> Self {
        App {
            snapshot: None,
            frozen: None,
            feed: FeedState::Waiting,
            replay: None,
            loaded_ns: None,
            loading_ns: None,
            reach_ns: None,
            screen: Screen::Overview,
            selected: [0; Screen::ALL.len()],
            follow_events: true,
            sort: SortKey::MsgRate,
            reversed: false,
            window: Window::Last10s,
            filter: Filter::default(),
            filter_text: String::new(),
            filter_input: None,
            filter_error: None,
            help: false,
            detail: None,
            event_detail: None,
            opened: Vec::new(),
            pick: None,
            status: None,
            quit: false,
            page: 10,
            frame_times: FrameTimes::new(),
        }
    }

    /// A dashboard replaying a recorded session over `span` (start, end ns),
    /// opening on the whole of it: the cursor at its end, figures over the
    /// session.
    pub fn replay(span: (u64, u64)) -> Self {
        App {
            replay: Some(Timeline::new(span)),
            window: Window::Session,
            ..App::live()
        }
    }

    /// The replay with `marks` on its timeline, to jump to.
    pub fn with_marks(mut self, marks: Vec<crate::timeline::Mark>) -> Self {
        self.replay = self.replay.map(|t| t.with_marks(marks));
        self
    }

    /// Takes one frame of the live feed.
    pub fn on_frame(&mut self, frame: Frame) -> Result<(), FeedError> {
        match frame {
            Frame::Hello { version, .. } if version != PROTOCOL_VERSION => {
                return Err(FeedError::Version { got: version });
            }
            Frame::Hello { .. } => {}
            Frame::Snapshot(s) => {
                self.snapshot = Some(*s);
                if self.feed == FeedState::Waiting {
                    self.feed = FeedState::Running;
                }
            }
            Frame::Delta(d) => match &mut self.snapshot {
                Some(s) => s.apply(*d),
                None => return Err(FeedError::DeltaBeforeSnapshot),
            },
            Frame::End { exit_status } => {
                self.feed = FeedState::Ended { exit_status };
                if let Some(s) = &mut self.snapshot {
                    s.live = false;
                }
            }
        }
        Ok(())
    }

    /// The feed's sender went away; unless it said goodbye, say it was lost.
    pub fn on_feed_closed(&mut self) {
        if !matches!(self.feed, FeedState::Ended { .. }) {
            self.feed = FeedState::Lost;
        }
    }

    /// The feed failed (`why`): it is lost, and the reason stays shown.
    pub fn on_feed_failed(&mut self, why: &str) {
        self.on_feed_closed();
        self.status = Some(why.to_owned());
    }

    /// Advances a playing replay by `wall` real time.
    pub fn tick(&mut self, wall: Duration) {
        if let Some(t) = &mut self.replay {
            t.advance(wall);
        }
    }

    /// The replay position whose snapshot should be loaded, if the one
    /// shown is for another.
    pub fn replay_wants(&self) -> Option<u64> {
        let cursor = self.replay.as_ref()?.cursor();
        (self.loaded_ns != Some(cursor)).then_some(cursor)
    }

    /// The replay position being loaded, if one is.
    pub fn set_loading(&mut self, t_ns: Option<u64>) {
        self.loading_ns = t_ns;
    }

    /// The replay position being loaded, if one is.
    pub fn loading(&self) -> Option<u64> {
        self.loading_ns
    }

    /// How far a replay source that is still loading has got, and its
    /// state there when the position asked for lies further on: shown in
    /// the meantime, so that a big session fills the screens as it loads.
    pub fn set_replay_progress(&mut self, reach_ns: u64, state: Option<Snapshot>) {
        self.reach_ns = Some(reach_ns);
        if let Some(state) = state {
            self.snapshot = Some(state);
            self.feed = FeedState::Running;
        }
    }

    /// How far the replay source has loaded, if it told.
    pub fn reach(&self) -> Option<u64> {
        self.reach_ns
    }

    /// The replay source's state at `t_ns`.
    pub fn set_replay_snapshot(&mut self, t_ns: u64, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
        self.feed = FeedState::Running;
        self.loaded_ns = Some(t_ns);
        self.status = None;
    }

    /// The replay source failed at `t_ns`: say so, keep the last state, and
    /// do not retry until the cursor moves.
    pub fn set_replay_error(&mut self, t_ns: u64, error: &anyhow::Error) {
        self.loaded_ns = Some(t_ns);
        self.status = Some(format!("replay: {error:#}"));
    }

    /// The page size for PgUp/PgDn: the rows the body shows.
    pub fn set_page(&mut self, rows: usize) {
        self.page = rows.max(1);
    }

    /// What a key means right now.
    pub fn key_context(&self) -> KeyContext {
        KeyContext {
            editing_filter: self.filter_input.is_some(),
            replay: self.replay.is_some(),
        }
    }

    /// Applies one user action.
    pub fn update(&mut self, action: Action) {
        match action {
            Action::Quit => self.quit = true,
            Action::NextScreen => self.switch_to(self.screen.step(1)),
            Action::PrevScreen => self.switch_to(self.screen.step(-1)),
            Action::GoTo(s) => self.switch_to(s),
            Action::ToggleHelp => self.help = !self.help,
            Action::Up => self.move_selection(-1),
            Action::Down => self.move_selection(1),
            Action::PageUp => self.move_selection(-(self.page as isize)),
            Action::PageDown => self.move_selection(self.page as isize),
            Action::Top => self.move_selection(isize::MIN / 2),
            Action::Bottom => self.move_selection(isize::MAX / 2),
            Action::Enter => self.enter(),
            Action::OpenProcess => match self.pick {
                Some(_) => self.enter(),
                None => self.choose_process(),
            },
            Action::Back => self.back(),
            Action::TogglePause => match &mut self.replay {
                Some(t) => t.toggle_play(),
                None if self.frozen.is_some() => self.frozen = None,
                None => self.frozen = self.snapshot.clone(),
            },
            Action::StartFilter => self.filter_input = Some(self.filter_text.clone()),
            Action::FilterChar(c) => self.edit_filter(|s| s.push(c)),
            Action::FilterBackspace => self.edit_filter(|s| {
                s.pop();
            }),
            Action::FilterCommit => {
                // A filter with an error stays open so it can be fixed.
                if self.filter_error.is_none() {
                    if let Some(text) = self.filter_input.take() {
                        self.filter_text = text;
                    }
                }
            }
            Action::NextSort => {
                let i = SortKey::ALL
                    .iter()
                    .position(|k| *k == self.sort)
                    .unwrap_or(0);
                self.sort = SortKey::ALL[(i + 1) % SortKey::ALL.len()];
            }
            Action::ReverseSort => self.reversed = !self.reversed,
            Action::NextWindow => self.window = self.window.next(),
            Action::Faster => self.with_timeline(Timeline::faster),
            Action::Slower => self.with_timeline(Timeline::slower),
            Action::Seek(secs) => self.with_timeline(|t| t.seek(secs)),
            Action::SeekStart => self.with_timeline(Timeline::to_start),
            Action::SeekEnd => self.with_timeline(Timeline::to_end),
            Action::NextMark => self.with_timeline(Timeline::to_next_mark),
            Action::PreviousMark => self.with_timeline(Timeline::to_previous_mark),
        }
    }

    fn with_timeline(&mut self, f: impl FnOnce(&mut Timeline)) {
        if let Some(t) = &mut self.replay {
            f(t);
        }
    }

    /// A screen switch leaves the process views: they belong to the rows
    /// they were opened from.
    fn switch_to(&mut self, screen: Screen) {
        self.screen = screen;
        self.opened.clear();
        self.pick = None;
    }

    /// Whether Enter drills into the selected row's channel or event;
    /// elsewhere it opens a process the row names.
    pub fn enter_drills_down(&self) -> bool {
        self.opened.is_empty()
            && match self.screen {
                Screen::Channels => self.detail.is_none(),
                Screen::Topology => true,
                Screen::Events => self.event_detail.is_none(),
                Screen::Overview | Screen::Waits | Screen::Signals => false,
            }
    }

    fn enter(&mut self) {
        if let Some(pick) = self.pick.take() {
            if let Some(c) = pick.choices.get(pick.selected) {
                self.open_process(c.pid);
            }
            return;
        }
        if !self.enter_drills_down() {
            self.choose_process();
            return;
        }
        match self.screen {
            Screen::Channels => {
                let i = self.selected(Screen::Channels);
                self.detail = self.channel_rows().get(i).map(|c| c.id);
            }
            // An edge leads to its channel's drill-down.
            Screen::Topology => {
                let i = self.selected(Screen::Topology);
                if let Some(id) = self.edges().get(i).map(|e| e.channel.id) {
                    self.detail = Some(id);
                    self.screen = Screen::Channels;
                }
            }
            Screen::Events => {
                let i = self.selected(Screen::Events);
                // A copy: the log moves on under it, the details stay.
                self.event_detail = self.event_rows().get(i).map(|e| (*e).clone());
                self.follow_events = false;
                self.selected[Screen::Events.index()] = i;
            }
            Screen::Overview | Screen::Waits | Screen::Signals => {}
        }
    }

    /// Opens the process the selected row names, or offers the list when
    /// it names several.
    fn choose_process(&mut self) {
        let choices = self.process_choices();
        match &choices[..] {
            [] => {}
            [one] => self.open_process(one.pid),
            _ => {
                self.pick = Some(Pick {
                    choices,
                    selected: 0,
                })
            }
        }
    }

    fn open_process(&mut self, pid: u32) {
        self.opened.push(Opened { pid, selected: 0 });
    }

    /// The processes the selected row names, the one it is mostly about
    /// first (a sender before its receivers), each once.
    pub fn process_choices(&self) -> Vec<Choice> {
        let mut choices = Vec::new();
        let c = &mut choices;
        if !self.opened.is_empty() {
            if let Some(link) = self.process_links().get(self.process_selected()) {
                offer(c, link.peers(), link.peer_role());
            }
            return choices;
        }
        let selected = self.selected(self.screen);
        match self.screen {
            // The deadlock banner's members: the one row there is.
            Screen::Overview => {
                if let Some(d) = self.view().and_then(|s| s.active_deadlocks().next()) {
                    offer(c, d.cycle.iter().map(|m| m.pid), "deadlocked");
                }
            }
            Screen::Channels => {
                let row = self
                    .detail_channel()
                    .or_else(|| self.channel_rows().get(selected).copied());
                if let Some(row) = row {
                    offer(c, row.senders.iter().copied(), "sender");
                    offer(c, row.receivers.iter().copied(), "receiver");
                }
            }
            Screen::Topology => {
                if let Some(e) = self.edges().get(selected) {
                    offer(c, [e.from], "sender");
                    offer(c, [e.to], "receiver");
                }
            }
            Screen::Waits => {
                if let Some(w) = self.wait_rows().get(selected) {
                    offer(c, w.holders.iter().copied(), "holder");
                    offer(c, w.waiters.iter().copied(), "waiter");
                }
            }
            Screen::Signals => {
                if let Some(g) = self.signal_rows().get(selected) {
                    offer(c, process::senders(g), "sender");
                    offer(c, [g.target_pid], "target");
                }
            }
            Screen::Events => {
                let pid = match &self.event_detail {
                    Some(e) => Some(e.pid),
                    None => self.event_rows().get(selected).map(|e| e.pid),
                };
                offer(c, pid, "its process");
            }
        }
        choices
    }

    fn back(&mut self) {
        if self.filter_input.take().is_some() {
            // Cancel the edit: the committed filter parsed once, so it
            // parses again.
            self.filter = Filter::parse(&self.filter_text).unwrap_or_default();
            self.filter_error = None;
        } else if self.help {
            self.help = false;
        } else if self.pick.is_some() {
            self.pick = None;
        } else if !self.opened.is_empty() {
            // Back to the view or screen it was opened from, as it was.
            self.opened.pop();
        } else if self.screen == Screen::Events && self.event_detail.is_some() {
            self.event_detail = None;
        } else if self.detail.is_some() {
            self.detail = None;
        } else if !self.filter_text.is_empty() {
            self.filter_text.clear();
            self.filter = Filter::default();
        }
    }

    fn edit_filter(&mut self, edit: impl FnOnce(&mut String)) {
        let Some(text) = &mut self.filter_input else {
            return;
        };
        edit(text);
        // Filter as the user types; a half-typed term shows its error and
        // leaves the last good filter in force.
        match Filter::parse(text) {
            Ok(f) => {
                self.filter = f;
                self.filter_error = None;
                self.selected = [0; Screen::ALL.len()];
            }
            Err(e) => self.filter_error = Some(e),
        }
    }

    fn move_selection(&mut self, by: isize) {
        // Whatever is on top takes the keys: the list being picked from,
        // then the process view, then the screen.
        if let Some(pick) = &mut self.pick {
            pick.selected = moved(pick.selected, by, pick.choices.len());
            return;
        }
        if !self.opened.is_empty() {
            let (from, len) = (self.process_selected(), self.process_links().len());
            if let Some(top) = self.opened.last_mut() {
                top.selected = moved(from, by, len);
            }
            return;
        }
        let screen = self.screen;
        let len = self.row_count(screen);
        if len == 0 {
            return;
        }
        let to = moved(self.selected(screen), by, len);
        if screen == Screen::Events {
            self.follow_events = to == len - 1;
        }
        self.selected[screen.index()] = to;
    }

    /// How many selectable rows a screen has.
    fn row_count(&self, screen: Screen) -> usize {
        match screen {
            Screen::Overview => 0,
            // The drill-down has no selection: the table's stays put
            // for when the user comes back.
            Screen::Channels if self.detail.is_some() => 0,
            Screen::Channels => self.channel_rows().len(),
            Screen::Topology => self.edges().len(),
            Screen::Waits => self.wait_rows().len(),
            Screen::Signals => self.signal_rows().len(),
            Screen::Events => self.event_rows().len(),
        }
    }

    /// The selected row of a screen, within its rows.
    pub fn selected(&self, screen: Screen) -> usize {
        let last = self.row_count(screen).saturating_sub(1);
        if screen == Screen::Events && self.follow_events {
            return last;
        }
        self.selected[screen.index()].min(last)
    }

    /// Whether the user asked to quit.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The screen shown.
    pub fn screen(&self) -> Screen {
        self.screen
    }

    /// Whether the help overlay is up.
    pub fn help_shown(&self) -> bool {
        self.help
    }

    /// Where the feed stands.
    pub fn feed(&self) -> FeedState {
        self.feed
    }

    /// Whether a live display is frozen.
    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// The replay timeline; `None` for a live feed.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.replay.as_ref()
    }

    /// The channel sort column, and whether it is reversed.
    pub fn sort(&self) -> (SortKey, bool) {
        (self.sort, self.reversed)
    }

    /// The window the tables' rates and latencies cover.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The filter being typed, if any, and the committed one's text.
    pub fn filter_line(&self) -> (Option<&str>, &str) {
        (self.filter_input.as_deref(), &self.filter_text)
    }

    /// Why the filter being typed does not parse.
    pub fn filter_error(&self) -> Option<&FilterError> {
        self.filter_error.as_ref()
    }

    /// A non-fatal problem to show (a replay load that failed).
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The state shown: the frozen one while paused, else the newest.
    pub fn view(&self) -> Option<&Snapshot> {
        self.frozen.as_ref().or(self.snapshot.as_ref())
    }

    /// The event opened on the Events screen.
    pub fn event_detail(&self) -> Option<&Event> {
        self.event_detail.as_ref()
    }

    /// The pid of the process view shown, if one is.
    pub fn process(&self) -> Option<u32> {
        self.opened.last().map(|o| o.pid)
    }

    /// The rows of the process view shown, from the state shown.
    pub fn process_links(&self) -> Vec<Link<'_>> {
        match (self.view(), self.process()) {
            (Some(s), Some(pid)) => process::links(s, pid),
            _ => Vec::new(),
        }
    }

    /// The selected row of the process view, within its rows.
    pub fn process_selected(&self) -> usize {
        let last = self.process_links().len().saturating_sub(1);
        self.opened.last().map_or(0, |o| o.selected.min(last))
    }

    /// The processes offered, while the user picks one.
    pub fn pick(&self) -> Option<&Pick> {
        self.pick.as_ref()
    }

    /// The channel drilled into, while it still exists.
    pub fn detail_channel(&self) -> Option<&ChannelStats> {
        let id = self.detail?;
        self.view()?.channels.iter().find(|c| c.id == id)
    }

    /// Nanoseconds the shown state covers, for session-wide rates.
    pub fn elapsed_ns(&self) -> u64 {
        self.view()
            .map_or(0, |s| s.now_ns.saturating_sub(s.started_ns))
    }

    /// Process names by pid: the title a process gave itself, else its
    /// comm (`postgres: checkpointer`, not every one `postgres`).
    pub fn comms(&self) -> HashMap<u32, &str> {
        self.view()
            .map(|s| s.processes.iter().map(|p| (p.pid, p.name())).collect())
            .unwrap_or_default()
    }

    /// The channels that pass the filter, in the table's order.
    pub fn channel_rows(&self) -> Vec<&ChannelStats> {
        let Some(s) = self.view() else {
            return Vec::new();
        };
        let comms = self.comms();
        let mut rows: Vec<_> = s
            .channels
            .iter()
            .filter(|c| self.channel_matches(c, &comms))
            .collect();
        let elapsed = self.elapsed_ns();
        let w = self.window;
        let num = |c: &ChannelStats| -> f64 {
            let lat = w.latency(&c.latency);
            match self.sort {
                SortKey::MsgRate => w.rates(c, elapsed).messages_per_s,
                SortKey::ByteRate => w.rates(c, elapsed).bytes_per_s,
                SortKey::P50 => lat.p50 as f64,
                SortKey::P99 => lat.p99 as f64,
                SortKey::Max => lat.max as f64,
                SortKey::Queue => c.queue_depth.map_or(-1.0, |q| q as f64),
                SortKey::Messages => c.messages as f64,
                SortKey::Name => 0.0,
            }
        };
        let mut cmp = |a: &&ChannelStats, b: &&ChannelStats| -> Ordering {
            let by_name = a.channel.to_string().cmp(&b.channel.to_string());
            let o = match self.sort {
                SortKey::Name => by_name,
                // Biggest first; ties in name order so rows do not jump.
                _ => num(b).total_cmp(&num(a)).then(by_name),
            };
            if self.reversed {
                o.reverse()
            } else {
                o
            }
        };
        rows.sort_by(&mut cmp);
        rows
    }

    fn channel_matches(&self, c: &ChannelStats, comms: &HashMap<u32, &str>) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let pids: Vec<u32> = c.senders.iter().chain(&c.receivers).copied().collect();
        let names: Vec<&str> = pids.iter().filter_map(|p| comms.get(p).copied()).collect();
        self.filter.matches(&Fields {
            pids: &pids,
            comms: &names,
            kinds: &[c.channel.kind().as_str()],
            chan: &c.channel.name(),
        })
    }

    /// Topology edges that pass the filter, busiest first.
    pub fn edges(&self) -> Vec<Edge<'_>> {
        let mut edges: Vec<Edge<'_>> = self
            .channel_rows()
            .into_iter()
            .flat_map(|c| {
                process::pairs(c).into_iter().map(move |(from, to)| Edge {
                    from,
                    to,
                    channel: c,
                })
            })
            .collect();
        let elapsed = self.elapsed_ns();
        let volume = |e: &Edge<'_>| self.window.rates(e.channel, elapsed).bytes_per_s;
        edges.sort_by(|a, b| {
            volume(b)
                .total_cmp(&volume(a))
                .then(b.channel.messages.cmp(&a.channel.messages))
                .then((a.from, a.to).cmp(&(b.from, b.to)))
        });
        edges
    }

    /// Waited-on objects that pass the filter, most waited-on first.
    pub fn wait_rows(&self) -> Vec<&WaitStats> {
        let Some(s) = self.view() else {
            return Vec::new();
        };
        let mut rows: Vec<_> = s
            .waits
            .iter()
            .filter(|w| {
                self.filter.matches(&Fields {
                    kinds: &[w.channel.kind().as_str()],
                    chan: &w.channel.name(),
                    ..Fields::default()
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.waiting_now, b.total_ns)
                .cmp(&(a.waiting_now, a.total_ns))
                .then(a.id.cmp(&b.id))
        });
        rows
    }

    /// Signal pairs that pass the filter, most frequent first.
    pub fn signal_rows(&self) -> Vec<&SignalStats> {
        let Some(s) = self.view() else {
            return Vec::new();
        };
        let comms = self.comms();
        let mut rows: Vec<_> = s
            .signals
            .iter()
            .filter(|g| {
                let pids = [g.sender_pid, g.target_pid];
                let names: Vec<&str> = pids.iter().filter_map(|p| comms.get(p).copied()).collect();
                self.filter.matches(&Fields {
                    pids: &pids,
                    comms: &names,
                    kinds: &[&ipc_events::units::signal_name(g.signo)],
                    chan: "",
                })
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.key().cmp(&b.key())));
        rows
    }

    /// Recent events that pass the filter, oldest first.
    pub fn event_rows(&self) -> Vec<&Event> {
        let Some(s) = self.view() else {
            return Vec::new();
        };
        if self.filter.is_empty() {
            return s.recent_events.iter().collect();
        }
        s.recent_events
            .iter()
            .filter(|e| {
                let chan = e.channel.as_ref().map(|c| c.name()).unwrap_or_default();
                let chan_kind = e.channel.as_ref().map_or("", |c| c.kind().as_str());
                self.filter.matches(&Fields {
                    pids: &[e.pid, e.tid],
                    comms: &[&e.comm],
                    kinds: &[e.kind.as_str(), chan_kind],
                    chan: &chan,
                })
            })
            .collect()
    }
}

/// Adds `pids` to `choices` as `role`; one already there takes the role
/// as well (a process at both ends of a socket is sender and receiver).
fn offer(choices: &mut Vec<Choice>, pids: impl IntoIterator<Item = u32>, role: &str) {
    for pid in pids {
        match choices.iter_mut().find(|c| c.pid == pid) {
            Some(c) if !c.role.split(", ").any(|r| r == role) => {
                c.role.push_str(", ");
                c.role.push_str(role);
            }
            Some(_) => {}
            None => choices.push(Choice {
                pid,
                role: role.to_owned(),
            }),
        }
    }
}

/// A selection at `from` moved `by` rows within `len` rows.
fn moved(from: usize, by: isize, len: usize) -> usize {
    from.saturating_add_signed(by).min(len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{channel, snapshot_with_deadlock};
    use ipc_events::live::Delta;
    use ipc_events::EventKind;

    fn live_app(s: Snapshot) -> App {
        let mut app = App::live();
        app.on_frame(Frame::Hello {
            version: PROTOCOL_VERSION,
            session_id: 1,
        })
        .unwrap();
        app.on_frame(Frame::Snapshot(Box::new(s))).unwrap();
        app
    }

    #[test]
    fn edges_follow_who_sent_to_whom() {
        let mut s = snapshot_with_deadlock(false);
        s.channels.truncate(1);
        s.channels[0].senders = vec![101, 102];
        s.channels[0].receivers = vec![101, 102];
        s.channels[0].pairs = vec![(101, 102), (102, 101)];
        let app = live_app(s.clone());
        let edges: Vec<_> = app.edges().iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(edges.len(), 2);
        assert!(edges.contains(&(101, 102)) && edges.contains(&(102, 101)));
        // Nothing paired (one end traced): every sender to every receiver.
        s.channels[0].pairs.clear();
        assert_eq!(live_app(s).edges().len(), 4);
    }

    fn press(app: &mut App, actions: &[Action]) {
        for a in actions {
            app.update(*a);
        }
    }

    #[test]
    fn session_rates_average_over_the_elapsed_time() {
        let c = channel(1, "a", 100, 7.0);
        let r = Window::Session.rates(&c, 10_000_000_000);
        assert_eq!((r.messages_per_s, r.bytes_per_s), (10.0, 640.0));
        assert_eq!(Window::Session.rates(&c, 0), Rates::default());
        assert_eq!(Window::Last1s.rates(&c, 0).messages_per_s, 7.0);
    }

    #[test]
    fn tab_cycles_screens_both_ways() {
        let mut app = App::live();
        press(&mut app, &[Action::PrevScreen]);
        assert_eq!(app.screen(), Screen::Events);
        press(&mut app, &[Action::NextScreen, Action::NextScreen]);
        assert_eq!(app.screen(), Screen::Channels);
    }

    #[test]
    fn pausing_freezes_the_view_while_frames_keep_arriving() {
        let mut app = live_app(Snapshot {
            channels: vec![channel(1, "a", 10, 100.0)],
            ..Snapshot::default()
        });
        app.update(Action::TogglePause);
        app.on_frame(Frame::Delta(Box::new(Delta {
            channels: vec![channel(1, "a", 99, 100.0)],
            ..Delta::default()
        })))
        .unwrap();
        assert_eq!(app.view().unwrap().channels[0].messages, 10);
        app.update(Action::TogglePause);
        assert_eq!(
            app.view().unwrap().channels[0].messages,
            99,
            "unpausing shows the newest state"
        );
    }

    #[test]
    fn feed_errors_are_refused_and_the_end_is_remembered() {
        let mut app = App::live();
        assert!(matches!(
            app.on_frame(Frame::Delta(Box::default())),
            Err(FeedError::DeltaBeforeSnapshot)
        ));
        let err = app
            .on_frame(Frame::Hello {
                version: PROTOCOL_VERSION + 1,
                session_id: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("protocol version 2"));
        app.on_frame(Frame::Snapshot(Box::default())).unwrap();
        app.on_frame(Frame::End {
            exit_status: Some(3),
        })
        .unwrap();
        app.on_feed_closed();
        assert_eq!(
            app.feed(),
            FeedState::Ended {
                exit_status: Some(3)
            }
        );
        let mut lost = live_app(Snapshot::default());
        lost.on_feed_closed();
        assert_eq!(lost.feed(), FeedState::Lost);
    }

    #[test]
    fn channels_sort_by_the_chosen_column_and_reverse() {
        let mut app = live_app(Snapshot {
            channels: vec![
                channel(1, "slow", 10, 1.0),
                channel(2, "fast", 5, 50.0),
                channel(3, "mid", 20, 10.0),
            ],
            ..Snapshot::default()
        });
        let names = |app: &App| -> Vec<String> {
            app.channel_rows()
                .iter()
                .map(|c| c.channel.name())
                .collect()
        };
        assert_eq!(names(&app), ["fast", "mid", "slow"], "msg/s, biggest first");
        // msg/s -> bytes/s -> p50 -> p99 -> max -> queue -> messages
        press(&mut app, &[Action::NextSort; 6]);
        assert_eq!(app.sort().0, SortKey::Messages);
        assert_eq!(names(&app), ["mid", "slow", "fast"]);
        press(&mut app, &[Action::NextSort, Action::ReverseSort]);
        assert_eq!(app.sort(), (SortKey::Name, true));
        assert_eq!(names(&app), ["slow", "mid", "fast"]);
    }

    #[test]
    fn filter_applies_as_typed_and_a_bad_one_stays_open_with_its_error() {
        let mut app = live_app(Snapshot {
            channels: vec![channel(1, "jobs", 1, 1.0), channel(2, "logs", 1, 1.0)],
            ..Snapshot::default()
        });
        app.update(Action::StartFilter);
        assert!(app.key_context().editing_filter);
        app.update(Action::FilterChar('o'));
        assert_eq!(app.channel_rows().len(), 2, "both names have an o");
        app.update(Action::FilterChar(':'));
        assert_eq!(
            app.filter_error().map(|e| e.to_string()).as_deref(),
            Some("unknown field \"o\": use pid: comm: kind: chan:")
        );
        assert_eq!(app.channel_rows().len(), 2, "the last good filter holds");
        app.update(Action::FilterCommit);
        assert!(app.key_context().editing_filter, "still open to fix it");
        app.update(Action::FilterBackspace);
        assert!(app.filter_error().is_none());
        app.update(Action::FilterBackspace);
        for c in "jo".chars() {
            app.update(Action::FilterChar(c));
        }
        assert_eq!(app.channel_rows().len(), 1, "filtered as typed");
        app.update(Action::FilterCommit);
        assert_eq!(app.filter_line(), (None, "jo"));
        app.update(Action::Back);
        assert_eq!(app.channel_rows().len(), 2, "Esc clears the filter");
    }

    #[test]
    fn enter_drills_into_the_selected_channel_and_esc_comes_back() {
        let mut app = live_app(Snapshot {
            channels: vec![channel(1, "a", 1, 5.0), channel(2, "b", 1, 1.0)],
            ..Snapshot::default()
        });
        press(
            &mut app,
            &[Action::GoTo(Screen::Channels), Action::Down, Action::Down],
        );
        assert_eq!(app.selected(Screen::Channels), 1, "clamped to the last row");
        app.update(Action::Enter);
        assert_eq!(app.detail_channel().unwrap().id, 2);
        app.update(Action::Back);
        assert!(app.detail_channel().is_none());
    }

    #[test]
    fn enter_opens_an_edge_s_channel_and_an_event_s_details() {
        let mut app = live_app(snapshot_with_deadlock(false));
        press(
            &mut app,
            &[Action::GoTo(Screen::Topology), Action::Down, Action::Enter],
        );
        assert_eq!(app.screen(), Screen::Channels);
        assert_eq!(app.detail_channel().unwrap().channel.name(), "results");

        press(
            &mut app,
            &[Action::GoTo(Screen::Events), Action::Up, Action::Enter],
        );
        let opened = app.event_detail().unwrap().clone();
        assert_eq!(opened, app.view().unwrap().recent_events[48]);
        app.on_frame(Frame::Delta(Box::new(Delta {
            events: vec![Event::new(
                1,
                9,
                9,
                ipc_events::Source::Lib,
                EventKind::MsgSend,
            )],
            ..Delta::default()
        })))
        .unwrap();
        assert_eq!(
            app.event_detail(),
            Some(&opened),
            "new events do not move it"
        );
        app.update(Action::Back);
        assert!(app.event_detail().is_none());
        app.update(Action::GoTo(Screen::Channels));
        assert!(app.detail_channel().is_some(), "each Esc closes one thing");
    }

    /// The pids, and what each is to the row, of the list Enter or `o`
    /// offered.
    fn offered(app: &App) -> Vec<(u32, &str)> {
        app.pick().map_or(Vec::new(), |p| {
            p.choices.iter().map(|c| (c.pid, c.role.as_str())).collect()
        })
    }

    #[test]
    fn enter_opens_the_process_a_row_names_from_every_screen_that_names_one() {
        let mut app = live_app(snapshot_with_deadlock(true));
        // Signals: sender first, then the target.
        press(&mut app, &[Action::GoTo(Screen::Signals), Action::Enter]);
        assert_eq!(offered(&app), [(100, "sender"), (102, "target")]);
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(102));
        assert!(app.pick().is_none());

        // Topology: Enter is the edge's channel; `o` its processes.
        press(
            &mut app,
            &[
                Action::GoTo(Screen::Topology),
                Action::Down,
                Action::OpenProcess,
            ],
        );
        assert_eq!(app.process(), None, "a screen switch closes the view");
        assert_eq!(offered(&app), [(102, "sender"), (101, "receiver")]);
        app.update(Action::OpenProcess);
        assert_eq!(app.process(), Some(102), "o picks as Enter does");

        // Waits: the selected object's holders, then its waiters.
        press(&mut app, &[Action::GoTo(Screen::Waits), Action::Enter]);
        assert_eq!(offered(&app), [(102, "holder"), (101, "waiter")]);
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(101));

        // Overview: the members of the deadlock its banner shows.
        press(&mut app, &[Action::GoTo(Screen::Overview), Action::Enter]);
        assert_eq!(offered(&app), [(101, "deadlocked"), (102, "deadlocked")]);
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(102));

        // Events: Enter opens the event, Enter again its process; `o`
        // opens a row's process from the log itself.
        press(&mut app, &[Action::GoTo(Screen::Events), Action::Enter]);
        assert_eq!(app.event_detail().map(|e| e.pid), Some(102));
        app.update(Action::Enter);
        assert_eq!(app.process(), Some(102), "one process: no list");
        press(
            &mut app,
            &[
                Action::GoTo(Screen::Events),
                Action::Back,
                Action::Up,
                Action::OpenProcess,
            ],
        );
        assert_eq!(app.process(), Some(101));

        // The channel drill-down: its senders and receivers.
        press(&mut app, &[Action::GoTo(Screen::Channels), Action::Enter]);
        assert_eq!(app.detail_channel().map(|c| c.id), Some(1));
        app.update(Action::Enter);
        assert_eq!(offered(&app), [(101, "sender"), (102, "receiver")]);
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(102));

        // A row of the process view: its peer, stacked on the view.
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(101), "102 receives jobs from 101");
    }

    #[test]
    fn a_process_at_both_ends_of_a_socket_is_offered_once_as_both() {
        let mut s = snapshot_with_deadlock(false);
        s.channels[0].senders = vec![101, 102];
        s.channels[0].receivers = vec![102, 101];
        let mut app = live_app(s);
        press(
            &mut app,
            &[Action::GoTo(Screen::Channels), Action::Enter, Action::Enter],
        );
        assert_eq!(
            offered(&app),
            [(101, "sender, receiver"), (102, "sender, receiver")]
        );
    }

    #[test]
    fn esc_goes_back_one_step_to_where_the_process_was_opened() {
        let mut app = live_app(snapshot_with_deadlock(true));
        press(
            &mut app,
            &[Action::GoTo(Screen::Channels), Action::Enter, Action::Enter],
        );
        app.update(Action::Back);
        assert!(app.pick().is_none(), "Esc cancels the list");
        assert_eq!(app.process(), None);
        press(&mut app, &[Action::Enter, Action::Enter]);
        assert_eq!(app.process(), Some(101));
        // 101's second row: the pipe it writes to 102.
        press(&mut app, &[Action::Down, Action::Enter]);
        assert_eq!(app.process(), Some(102));
        app.update(Action::Back);
        assert_eq!(app.process(), Some(101));
        assert_eq!(app.process_selected(), 1, "as it was left");
        app.update(Action::Back);
        assert_eq!(app.process(), None);
        assert_eq!(app.screen(), Screen::Channels);
        assert_eq!(
            app.detail_channel().map(|c| c.id),
            Some(1),
            "back in the channel it was opened from"
        );

        press(
            &mut app,
            &[Action::GoTo(Screen::Events), Action::Enter, Action::Enter],
        );
        app.update(Action::Back);
        assert!(app.event_detail().is_some(), "back on the event");
    }

    #[test]
    fn the_process_view_follows_its_pid_into_new_state() {
        let mut app = live_app(snapshot_with_deadlock(false));
        press(
            &mut app,
            &[Action::GoTo(Screen::Signals), Action::OpenProcess],
        );
        press(&mut app, &[Action::Down, Action::Enter, Action::Bottom]);
        assert_eq!(app.process(), Some(102));
        let last = app.process_links().len() - 1;
        assert_eq!(app.process_selected(), last);

        // A fresh snapshot in which 102 does less: same pid, fewer rows.
        let mut s = snapshot_with_deadlock(false);
        s.processes.reverse();
        s.deadlocks.clear();
        app.on_frame(Frame::Snapshot(Box::new(s))).unwrap();
        assert_eq!(app.process(), Some(102));
        assert_eq!(app.process_links().len(), last, "the deadlock row went");
        assert_eq!(app.process_selected(), last - 1, "kept within the rows");

        // A delta: 102 starts sending on a new channel.
        let mut c = channel(9, "acks", 5, 1.0);
        (c.senders, c.receivers, c.pairs) = (vec![102], vec![100], vec![(102, 100)]);
        app.on_frame(Frame::Delta(Box::new(Delta {
            channels: vec![c],
            ..Delta::default()
        })))
        .unwrap();
        let sends: Vec<_> = app
            .process_links()
            .iter()
            .filter_map(|l| match l {
                Link::Sends { channel, peers } => Some((channel.id, peers.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(sends, [(2, vec![101]), (9, vec![100])]);
    }

    #[test]
    fn the_process_view_has_its_own_selection_and_a_list_its_own() {
        let mut app = live_app(snapshot_with_deadlock(true));
        press(&mut app, &[Action::GoTo(Screen::Waits), Action::Enter]);
        press(&mut app, &[Action::Down, Action::Down, Action::Down]);
        assert_eq!(app.pick().map(|p| p.selected), Some(1), "within the list");
        app.update(Action::Enter);
        press(&mut app, &[Action::Down, Action::Down]);
        assert_eq!(app.process_selected(), 2);
        assert_eq!(app.selected(Screen::Waits), 0, "the screen's stays put");
    }

    #[test]
    fn the_event_log_follows_the_newest_until_scrolled() {
        let mut app = live_app(snapshot_with_deadlock(false));
        app.update(Action::GoTo(Screen::Events));
        let n = app.event_rows().len();
        assert!(n > 3);
        assert_eq!(app.selected(Screen::Events), n - 1);
        press(&mut app, &[Action::Up, Action::Up]);
        assert_eq!(app.selected(Screen::Events), n - 3);
        app.update(Action::Bottom);
        assert_eq!(app.selected(Screen::Events), n - 1);
        app.update(Action::Top);
        assert_eq!(app.selected(Screen::Events), 0);
    }

    #[test]
    fn replay_loads_once_per_cursor_position() {
        let s = 1_000_000_000;
        let mut app = App::replay((0, 10 * s));
        assert!(app.key_context().replay);
        assert_eq!(app.replay_wants(), Some(10 * s), "it opens at the end");
        app.set_replay_snapshot(10 * s, Snapshot::default());
        assert_eq!(app.replay_wants(), None);
        press(&mut app, &[Action::Seek(-7), Action::Faster]);
        assert_eq!(app.replay_wants(), Some(3 * s));
        app.set_replay_error(3 * s, &anyhow::anyhow!("database is locked"));
        assert_eq!(app.replay_wants(), None, "no retry until the cursor moves");
        assert_eq!(app.status(), Some("replay: database is locked"));
        app.update(Action::TogglePause);
        app.tick(Duration::from_secs(1));
        assert_eq!(app.replay_wants(), Some(5 * s), "one second at 2x");
    }
}
