//! Replaying a big session on the dashboard: a generated session of
//! EVENTS events (default 10,000,000: paired messages on 16 channels
//! among 8 processes, 10 µs apart, so 100 s long, with a semaphore wait
//! every 1,000 events), stored once by the real writer and kept in
//! `target/` for later runs, then opened as `ipcscope tui --db` does: the
//! real source, loader thread, app and drawing (off-screen, 110x32).
//!
//!     cargo bench -p cli --bench replay -- [EVENTS] [SEEKS]
//!
//! Prints the time to the first frame and to the first frame with the
//! session's figures, how long indexing the whole session takes (what
//! the first End waits for), then End, Home and SEEKS (default 20) seeks to
//! random moments, each timed from the key to the frame that shows it;
//! the frame time while indexing (keys pressed meanwhile); and memory.

#[path = "../src/replay_source.rs"]
mod replay_source;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use collector::replay::Replay;
use collector::store::{spawn_writer, NewSession, OpenMode, Store, WriterConfig};
use ipc_events::{ChannelId, ChannelKind, Event, EventKind, Source};
use tui::action::Action;
use tui::app::App;
use tui::ratatui::backend::TestBackend;
use tui::ratatui::Terminal;
use tui::run::{Feed, ReplayFeed};
use tui::timing::quantile;
use tui::ReplaySource;

const SPACING_NS: u64 = 10_000;
const START_NS: u64 = 1_000_000_000;

/// The session: `n` events, batch by batch.
fn batches(n: u64) -> impl Iterator<Item = Vec<Event>> {
    let channels: Vec<ChannelId> = (0..16)
        .map(|i| ChannelId::named(ChannelKind::IpclibChannel, format!("bench-{i}")))
        .collect();
    let sem = ChannelId::named(ChannelKind::IpclibSem, "bench-lock");
    (0..n).step_by(4096).map(move |from| {
        (from..(from + 4096).min(n))
            .map(|i| {
                let ts = START_NS + i * SPACING_NS;
                let pid = 100 + (i / 2 % 8) as u32;
                if i % 1000 == 998 || i % 1000 == 999 {
                    let kind = match i % 2 {
                        0 => EventKind::SemWaitBegin,
                        _ => EventKind::SemWaitEnd,
                    };
                    let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
                    e.channel = Some(sem.clone());
                    return e;
                }
                let msg = i / 2;
                let (kind, pid) = match i % 2 {
                    0 => (EventKind::MsgSend, pid),
                    _ => (EventKind::MsgRecv, pid + 8),
                };
                let mut e = Event::new(ts, pid, pid, Source::Lib, kind);
                e.comm = format!("bench-{pid}");
                e.channel = Some(channels[(msg % 16) as usize].clone());
                e.size = 64 + msg % 512;
                e.msg_id = Some(msg / 16 + 1);
                e
            })
            .collect()
    })
}

/// The session's database, generated when missing.
async fn database(n: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("replay-{n}.db"));
    if path.exists() {
        return path;
    }
    let partial = dir.join(format!("replay-{n}.db.partial"));
    let _ = std::fs::remove_file(&partial);
    let started = Instant::now();
    let store = Store::open(&partial, OpenMode::Create).await.unwrap();
    let session = store
        .begin_session(&NewSession {
            name: Some("replay-bench".into()),
            command: "bench".into(),
            host: "bench".into(),
            started_at: "2026-12-07T00:00:00.000Z".into(),
            sources: "lib".into(),
            start_mono_ns: START_NS,
            recorder_pid: std::process::id(),
        })
        .await
        .unwrap();
    // As fast as the writer takes them: no budget (nothing counted as
    // dropped for being ahead of the disk); the producer waits instead
    // while a million events are not yet stored, so memory stays bounded.
    let config = WriterConfig {
        max_unstored: u64::MAX,
        ..WriterConfig::default()
    };
    let (ingest, writer) = spawn_writer(&store, session, config).await.unwrap();
    let unstored = writer.unstored();
    for batch in batches(n) {
        while unstored.load(std::sync::atomic::Ordering::Relaxed) > 1_000_000 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        ingest.send(batch).await.unwrap();
    }
    drop(ingest);
    let stats = writer.finish().await.unwrap();
    assert_eq!(stats.events, n, "the writer stored every event");
    let end = START_NS + n * SPACING_NS;
    store
        .finish_session(session, "2026-12-07T00:01:40.000Z", end, Some(0))
        .await
        .unwrap();
    store.close().await;
    std::fs::rename(&partial, &path).unwrap();
    eprintln!(
        "generated {} ({n} events) in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}

/// A `/proc/self/status` field in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The dashboard's loop, headless: pump the feed, draw.
struct Dashboard {
    app: App,
    feed: ReplayFeed,
    term: Terminal<TestBackend>,
    frames: Vec<Duration>,
}

impl Dashboard {
    fn frame(&mut self) {
        let start = Instant::now();
        self.feed.pump(&mut self.app).unwrap();
        self.term.draw(|f| tui::ui::draw(f, &self.app)).unwrap();
        self.frames.push(start.elapsed());
    }

    /// Takes `action` and draws until the frame shows its position:
    /// the time from the key to that frame.
    fn key_to_frame(&mut self, action: Action) -> Duration {
        let start = Instant::now();
        self.app.update(action);
        loop {
            self.frame();
            if self.app.replay_wants().is_none() {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(600), "no answer");
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let q = |p| ms(quantile(&times, p).unwrap());
    println!(
        "{name:<28} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        times.len(),
        q(0.5),
        q(0.99),
        ms(*times.last().unwrap())
    );
}

/// Opens the session as `ipcscope tui --db` does and times it.
fn replay_once(rt: &tokio::runtime::Runtime, path: &Path, events: u64, seeks: usize) {
    let opened = Instant::now();
    let replay = rt.block_on(async {
        let store = Store::open(path, OpenMode::Existing).await.unwrap();
        let session = store.latest_session().await.unwrap().unwrap();
        Replay::open(store, session).await.unwrap()
    });
    let source = replay_source::DbReplay::new(replay, rt.handle().clone());
    let span = source.span();
    let mut d = Dashboard {
        app: App::replay(span),
        feed: ReplayFeed::new(source).unwrap(),
        term: Terminal::new(TestBackend::new(110, 32)).unwrap(),
        frames: Vec::new(),
    };
    d.frame();
    let first_frame = opened.elapsed();
    while d.app.view().is_none_or(|s| s.channels.is_empty()) {
        d.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_figures = opened.elapsed();
    // While the whole session indexes (the first End waits for that),
    // keys are pressed and frames drawn as the run loop would, 20 a second.
    let mut keys = [Action::Seek(1), Action::Seek(-1), Action::SeekEnd]
        .iter()
        .cycle();
    let mut n = 0;
    while d.app.replay_wants().is_some() {
        if n % 10 == 0 {
            d.app.update(*keys.next().unwrap());
        }
        n += 1;
        d.frame();
        std::thread::sleep(Duration::from_millis(50));
    }
    let indexed = opened.elapsed();
    let while_indexing = std::mem::take(&mut d.frames);
    println!("first frame                  {:>8.2} ms", ms(first_frame));
    println!("first frame with figures     {:>8.2} ms", ms(first_figures));
    println!(
        "whole session indexed (End)  {:>8.2} ms  ({:.2} M events/s)",
        ms(indexed),
        events as f64 / indexed.as_secs_f64() / 1e6
    );
    summary("frame while indexing", while_indexing);

    let mut ends = Vec::new();
    let mut homes = Vec::new();
    let mut random = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let length_s = ((span.1 - span.0) / 1_000_000_000) as i32;
    for _ in 0..seeks {
        homes.push(d.key_to_frame(Action::SeekStart));
        ends.push(d.key_to_frame(Action::SeekEnd));
        // xorshift: the same moments every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let to = (seed % length_s.max(1) as u64) as i32;
        d.app.update(Action::SeekStart);
        random.push(d.key_to_frame(Action::Seek(to)));
    }
    summary("End (key to frame)", ends);
    summary("Home (key to frame)", homes);
    summary("random seek (key to frame)", random);
    summary("frame after indexing", d.frames);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, as a smoke test: keep that small.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut nums = args.iter().filter_map(|a| a.parse::<u64>().ok());
    let events = nums
        .next()
        .unwrap_or(if benching { 10_000_000 } else { 20_000 });
    let seeks = nums.next().unwrap_or(if benching { 20 } else { 3 }) as usize;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let path = rt.block_on(database(events));
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "session: {events} events, {:.0} s, {:.0} MiB on disk",
        (events * SPACING_NS) as f64 / 1e9,
        size as f64 / 1048576.0
    );

    // As a recording cut short or made by an older ipcscope leaves it:
    // no stored index, so the replay indexes the session as it opens.
    rt.block_on(async {
        let store = Store::open(&path, OpenMode::Create).await.unwrap();
        sqlx::query("DELETE FROM replay_index")
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
    });
    println!("-- without a stored index (indexed as it opens)");
    replay_once(&rt, &path, events, seeks);
    // As `record` leaves it: indexed once when the session ended.
    let stored = Instant::now();
    rt.block_on(async {
        let store = Store::open(&path, OpenMode::Create).await.unwrap();
        let session = store.latest_session().await.unwrap().unwrap();
        collector::replay::store_index(&store, session)
            .await
            .unwrap();
        store.close().await;
    });
    println!(
        "-- with the index stored as record stores it (storing took {:.2} ms)",
        ms(stored.elapsed())
    );
    replay_once(&rt, &path, events, seeks);
    // The database is read through a memory map: its pages count in the
    // resident set, but they are the kernel's page cache, shared and
    // dropped under pressure; the replay's own memory is the anonymous part.
    println!(
        "memory: peak resident {:.0} MiB; now {:.0} MiB anonymous, {:.0} MiB of mapped database",
        status_mib("VmHWM"),
        status_mib("RssAnon"),
        status_mib("RssFile")
    );
}
