//! `ipcscope record`: run a command under observation and store the session.
//!
//! The command runs with the recorder's stdio and its exit status is handed
//! back untouched. With the eBPF source the recorder registers itself in the
//! probes' PID map as a *launcher* just before spawning, so the kernel
//! starts following the child from its very first instruction (and every
//! descendant it forks) with no window for a race; the launcher entry is
//! removed as soon as the child exists, so the recorder's own activity is
//! never traced.
//!
//! Once the probes are attached and the command started, the recorder
//! drops every capability it no longer needs (see [`crate::privileges`]);
//! the command keeps what ipcscope was run with.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipc_events::raw::drop_source;
use ipc_events::{Event, EventKind, Source};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::analysis::{Analyzer, AnalyzerConfig, DeadlockChange};
use crate::clock::{monotonic_ns, wall_rfc3339};
use crate::ebpf::blocked::{self, BlockedReceives};
use crate::ebpf::titles::{self, TitleScanner};
use crate::ebpf::{running_process_events, ProbeConfig, Probes};
use crate::lib_ring::{Admission, RingListener, SOCKET_ENV};
use crate::live::LiveFeed;
use crate::note;
use crate::store::{
    spawn_writer, Correlated, Ingest, NewSession, OpenMode, SessionId, Store, WriterConfig,
    WriterStats, MIN_DB_BYTES,
};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub db: PathBuf,
    pub name: Option<String>,
    /// The command and its arguments; may be empty when `pids` or `all`
    /// say what to record.
    pub command: Vec<OsString>,
    /// Load the eBPF probes (needs CAP_BPF + CAP_PERFMON, or root).
    pub ebpf: bool,
    /// When the probes cannot be loaded, say why and record the ipc-lib
    /// source alone instead of failing.
    pub ebpf_optional: bool,
    /// Send the command's stdout and stderr to this file (created 0600)
    /// instead of ours: for when a dashboard owns the terminal.
    pub output: Option<PathBuf>,
    /// Running processes to follow, each with its descendants (those it
    /// has and those it will fork). Needs the probes.
    pub pids: Vec<u32>,
    /// Follow every process on the machine but the recorder. Needs the
    /// probes.
    pub all: bool,
    /// Keep the first this many bytes of each message the probes see (at
    /// most `ipc_events::raw::MAX_PAYLOAD`, which loading the probes
    /// checks); 0 keeps none.
    pub payload_bytes: u16,
    /// Bytes in the kernel's event ring; `None` for the default
    /// (`ebpf::DEFAULT_RING_BYTES`). Loading the probes checks it.
    pub kernel_ring_bytes: Option<u32>,
    /// Keep the database under this many bytes by removing the session's
    /// oldest raw events and messages as it grows (retention); every
    /// aggregate is kept for the whole session. At least
    /// [`MIN_DB_BYTES`].
    pub max_db_bytes: Option<u64>,
}

/// How a caller steers a recording while it runs.
#[derive(Debug, Default)]
pub struct RecordControl {
    /// Told where the live feed is served, once it is.
    pub live_ready: Option<oneshot::Sender<PathBuf>>,
    /// Ends the recording early when it turns true: the command gets
    /// SIGTERM, as when the recorder itself does.
    pub stop: Option<watch::Receiver<bool>>,
}

/// What a recording produced.
#[derive(Debug, Clone)]
pub struct RecordOutcome {
    pub session: SessionId,
    /// The command's exit status, 128+N when killed by signal N (the
    /// shell's convention, so `record` can exit with it).
    pub exit_status: i32,
    pub writer: WriterStats,
    /// Events lost, by `drops.source`, as stored: every source counts its
    /// own losses (kernel ring, ipc-lib rings, ingest queue, decoding).
    pub drops: Vec<(String, u64)>,
    /// What went wrong after the command started, each in one line: the
    /// recording is incomplete (storing failed, say on a full disk), though
    /// the command ran to its end and `exit_status` is its own.
    pub failures: Vec<String>,
}

/// Records `options.command` until it exits.
pub async fn record(options: RecordOptions) -> Result<RecordOutcome> {
    record_with(options, RecordControl::default()).await
}

/// [`record`], steered by `control`.
///
/// Once the command is started, this process keeps only the capabilities
/// the rest of the recording needs: this is for a process that records,
/// not one that goes on to load probes.
pub async fn record_with(options: RecordOptions, control: RecordControl) -> Result<RecordOutcome> {
    check_options(&options)?;
    let program = options.command.first();

    // Probes first: a missing privilege should fail before a database or a
    // process is created.
    let config = ProbeConfig {
        trace_all: options.all,
        payload_bytes: options.payload_bytes,
        ring_bytes: options.kernel_ring_bytes,
    };
    let mut probes = match options.ebpf {
        true => match Probes::load(&config) {
            Ok(p) => Some(p),
            Err(e) if options.ebpf_optional => {
                note!(
                    "ipcscope: recording ipc-lib processes only: the eBPF probes did not load: {e:#}"
                );
                None
            }
            Err(e) => return Err(e).context("loading the eBPF probes"),
        },
        false => None,
    };

    let store = Store::open(&options.db, OpenMode::Create).await?;
    let recorder_pid = std::process::id();
    let start_mono_ns = monotonic_ns();
    let session = store
        .begin_session(&NewSession {
            name: options.name.clone(),
            command: session_command(&options),
            host: hostname(),
            started_at: wall_rfc3339(),
            sources: if probes.is_some() { "ebpf,lib" } else { "lib" }.to_owned(),
            start_mono_ns,
            recorder_pid,
        })
        .await?;
    // What the writer correlates goes on to the analysis before it is stored,
    // which the live feed and the deadlock detector read.
    let analyzer = Arc::new(Mutex::new(Analyzer::new(
        session.0,
        options
            .name
            .clone()
            .unwrap_or_else(|| session_command(&options)),
        start_mono_ns,
        AnalyzerConfig::default(),
    )));
    let (observer, correlated) = mpsc::channel(ANALYSIS_QUEUE);
    let (ingest, writer) = spawn_writer(
        &store,
        session,
        WriterConfig {
            observer: Some(observer),
            recorder_pid: Some(recorder_pid),
            max_db_bytes: options.max_db_bytes,
            ..WriterConfig::default()
        },
    )
    .await?;
    if let Some(limit) = options.max_db_bytes {
        note!(
            "ipcscope: retention on: {} is kept under {} (--max-db-size) by removing this session's oldest events and messages as it fills; its aggregates (traffic, latency, waits, signals) stay whole",
            options.db.display(),
            ipc_events::units::bytes(limit)
        );
    }
    let analysis = tokio::spawn(analyse(
        Arc::clone(&analyzer),
        correlated,
        writer.unstored(),
        store.clone(),
        session,
    ));
    let feed = LiveFeed::bind(&runtime_dir()).context("opening the live-feed socket")?;
    store.set_live_socket(session, Some(feed.path())).await?;
    if let Some(ready) = control.live_ready {
        let _ = ready.send(feed.path().to_owned());
    }
    let (stop_feed, feed_stopped) = watch::channel(None);
    let feed_task = tokio::spawn(feed.run(session.0, Arc::clone(&analyzer), feed_stopped));

    // Take over the signals a terminal sends to the whole foreground group:
    // the command gets them too and decides for itself; the recorder stays
    // to write down how it ended.
    let mut interrupts = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminations =
        signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;

    // ipc-lib processes find the recorder through this socket and hand it
    // their event rings.
    // The command and what it starts are below the recorder.
    let admission = Admission::new(
        std::iter::once(recorder_pid)
            .chain(options.pids.iter().copied())
            .collect(),
    );
    let rings = RingListener::bind(admission).context("opening the ipc-lib ring socket")?;
    let (stop_rings, rings_stopped) = watch::channel(false);
    let ring_address = rings.address().to_owned();
    // The command's start and exit are reported here, where it is spawned
    // and reaped; its ring must not report them a second time.
    let (command_pid, command_known) = watch::channel(None);
    let rings = rings.with_command(command_known);
    let ring_task = tokio::spawn(rings.run(ingest.clone(), rings_stopped, probes.is_none()));

    // Processes already running are followed before the command starts,
    // and reported as the probes would have had they seen them start.
    if let Some(p) = probes.as_mut() {
        let running = if options.all {
            Probes::running_processes()?
                .into_iter()
                .map(|(pid, _)| pid)
                .filter(|&pid| pid != recorder_pid)
                .collect()
        } else {
            p.follow(&options.pids)
                .context("following the processes given with -p")?
        };
        let events: Vec<Event> = running
            .into_iter()
            .flat_map(running_process_events)
            .collect();
        if program.is_none() {
            note!(
                "ipcscope: following {} processes; Ctrl-C to stop",
                events.len() / 2
            );
        }
        ingest.send(events).await?;
    }

    let mut child = None;
    let mut not_started = None;
    let mut orphans = None;
    if let Some(program) = program {
        // A process of the command's whose parent exits comes to the
        // recorder rather than to init: it stays below the recorder, where
        // the ring socket's admission finds it whatever user it became.
        // The recorder reaps it (`reap_orphans`).
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER reads its integer
        // argument only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            note!(
                "ipcscope: processes of the command orphaned during the recording go to init: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut command = Command::new(program);
        command
            .args(&options.command[1..])
            .env(SOCKET_ENV, &ring_address);
        if let Some(path) = &options.output {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!("cannot open {} for the command's output", path.display())
                })?;
            command
                .stdout(file.try_clone().context("duplicating the output file")?)
                .stderr(file);
        }
        if let Some(p) = probes.as_mut() {
            p.track(recorder_pid, true)
                .context("registering the recorder with the probes")?;
        }
        let spawned = command.spawn();
        if let Some(p) = probes.as_mut() {
            p.untrack(recorder_pid)
                .context("unregistering the recorder from the probes")?;
        }
        match spawned {
            Ok(spawned) => {
                let pid = spawned
                    .id()
                    .context("the command exited before it could be observed")?;
                command_pid.send_replace(Some(pid));
                if probes.is_none() {
                    // Without the probes nobody else reports the command's start.
                    ingest
                        .send(started_events(program, pid, recorder_pid))
                        .await?;
                }
                orphans = Some(tokio::spawn(reap_orphans(pid)));
                child = Some((spawned, pid));
            }
            // Checked before anything was created, so rare (the file
            // changed since, or the kernel cannot execute its format):
            // the session is ended as a shell would report it.
            Err(e) => {
                note!("ipcscope: cannot run {}: {e}", program.to_string_lossy());
                not_started = Some(match e.kind() {
                    std::io::ErrorKind::NotFound => NOT_FOUND,
                    _ => NOT_EXECUTABLE,
                });
            }
        }
    }
    // After the spawn, so that the command runs with what the user gave
    // us (`sudo ipcscope record -- cmd` runs cmd as root, as sudo would),
    // and after the last use of the probes' privileges.
    if let Err(e) = crate::privileges::drop_unneeded(&options.db) {
        // The command runs already: the recording goes on, and the user
        // learns what it still holds.
        note!("ipcscope: recording with more privileges than needed: {e}");
    }
    let pump = probes.map(|p| spawn_pump(p, ingest.clone()));

    let mut stop = control.stop;
    let wait_status = match child.as_mut() {
        Some((child, child_pid)) => {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status.context("waiting for the command")?,
                    _ = interrupts.recv() => {}
                    _ = terminations.recv() => terminate(*child_pid),
                    stopped = async { stop.as_mut()?.wait_for(|s| *s).await.ok().map(|_| ()) }, if stop.is_some() => {
                        if stopped.is_some() {
                            terminate(*child_pid);
                        }
                        // Asked once (or the asker is gone): do not ask again.
                        stop = None;
                    }
                }
            };
            Some(status)
        }
        None if not_started.is_some() => None,
        None => {
            let mut poll = tokio::time::interval(TARGETS_POLL);
            loop {
                tokio::select! {
                    _ = interrupts.recv() => break,
                    _ = terminations.recv() => break,
                    Some(()) = async { stop.as_mut()?.wait_for(|s| *s).await.ok().map(|_| ()) }, if stop.is_some() => break,
                    _ = poll.tick() => {
                        if !options.pids.is_empty() && !options.pids.iter().any(|&p| is_running(p)) {
                            break;
                        }
                    }
                }
            }
            None
        }
    };
    let exit_status = wait_status.map(shell_status).or(not_started);

    // Everything the sources still hold goes to the writer; if the writer
    // failed (a full disk, say), the sources only see it as gone, so its
    // own error is the one worth reporting.
    let drained: Result<Option<Probes>> = async {
        let probes = match pump {
            Some((stop, join)) => {
                let _ = stop.send(());
                let (_kernel_drops, probes) = join.await.context("the eBPF reader panicked")??;
                Some(probes)
            }
            None => {
                if let (Some((_, child_pid)), Some(status)) = (&child, wait_status) {
                    let mut exit = Event::new(
                        monotonic_ns(),
                        *child_pid,
                        *child_pid,
                        Source::Collector,
                        EventKind::ProcessExit,
                    );
                    exit.aux = status.into_raw() as u32 as u64;
                    ingest.send(vec![exit]).await?;
                }
                None
            }
        };
        if let Some(reaper) = &orphans {
            reaper.abort();
        }
        let _ = stop_rings.send(true);
        ring_task
            .await
            .context("the ipc-lib ring reader panicked")?;
        Ok(probes)
    }
    .await;
    drop(ingest);
    // The command has ended: from here a failure (to store, mostly: a full
    // disk, a lock held past the busy timeout) no longer cuts the end
    // short. The session is still ended, the command's status returned,
    // and each failure reported beside them.
    let mut failures: Vec<anyhow::Error> = Vec::new();
    let writer = writer.finish().await.unwrap_or_else(|e| {
        failures.push(anyhow::Error::new(e).context(format!(
            "storing session {} in {} failed; what was committed before is intact",
            session.0,
            options.db.display()
        )));
        WriterStats::default()
    });
    if !failures.is_empty() {
        // A full disk, most likely: what the session's end stores (its
        // latencies, its end, the command's status) needs a little room.
        store.release_reserve();
    }
    // When the writer failed, the sources only saw it go: its error is
    // the one worth reporting.
    let probes = drained.unwrap_or_else(|e| {
        if failures.is_empty() {
            failures.push(e);
        }
        None
    });
    // The writer is done, so the analysis has seen everything: its last
    // word on deadlocks is stored before the feed's last snapshot.
    match analysis.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(e.context("storing the analysis")),
        Err(e) => failures.push(anyhow::anyhow!("the analysis panicked: {e}")),
    }
    lock(&analyzer).finish();
    let _ = stop_feed.send(Some(exit_status));
    if let Err(e) = feed_task.await {
        failures.push(anyhow::anyhow!("the live feed panicked: {e}"));
    }
    let child_pid = child.as_ref().map(|(_, pid)| *pid);
    if let Err(e) = end_session(&store, session, child_pid, exit_status).await {
        failures.push(e.context(format!(
            "session {} could not be marked ended (it shows as unfinished)",
            session.0
        )));
    }
    let drops = store.drops_by_source(session).await.unwrap_or_else(|e| {
        failures.push(e.into());
        Vec::new()
    });
    if writer.retention_removed > 0 {
        note!(
            "ipcscope: retention removed the oldest {} of session {}'s {} events ({} chunks, `retention` in drops); `report` still counts its whole traffic",
            writer.retention_removed,
            session.0,
            writer.events,
            writer.retention_chunks
        );
    }
    // Indexed once, here, so that replays open complete at once; without
    // an index (this failed, or an older recording), a replay indexes the
    // session itself as it opens.
    if failures.is_empty() {
        // About 0.6 s per million events: say why a big one takes a while,
        // and let the user skip it (a replay then indexes as it opens).
        let stored = writer.events - writer.retention_removed;
        if stored >= 2_000_000 {
            note!(
                "ipcscope: indexing session {} ({stored} events) for replay… (Ctrl-C skips it)",
                session.0,
            );
        }
        tokio::select! {
            indexed = crate::replay::store_index(&store, session) => {
                if let Err(e) = indexed {
                    note!(
                        "ipcscope: session {} was not indexed for replay ({e}); `ipcscope tui` indexes it as it opens",
                        session.0
                    );
                }
            }
            _ = tokio::signal::ctrl_c() => note!(
                "ipcscope: indexing skipped; `ipcscope tui` indexes session {} as it opens",
                session.0
            ),
        }
    }
    store.close().await;
    drop(probes);
    Ok(RecordOutcome {
        session,
        exit_status: exit_status.unwrap_or(0),
        writer,
        drops,
        failures: failures.iter().map(|e| format!("{e:#}")).collect(),
    })
}

/// Marks the session ended: no live feed any more, the command's status,
/// the end time.
async fn end_session(
    store: &Store,
    session: SessionId,
    child_pid: Option<u32>,
    exit_status: Option<i32>,
) -> Result<()> {
    store.set_live_socket(session, None).await?;
    if let (Some(pid), Some(status)) = (child_pid, exit_status) {
        store.set_exit_status(session, pid, status).await?;
    }
    store
        .finish_session(session, &wall_rfc3339(), monotonic_ns(), exit_status)
        .await?;
    Ok(())
}

/// Correlated batches the analysis may fall behind by before the writer
/// waits for it.
const ANALYSIS_QUEUE: usize = 64;
/// How often deadlock candidates are checked against the threshold: well
/// inside the 100 ms by which a deadlock must be reported once due.
const DETECT_EVERY: Duration = Duration::from_millis(20);

/// Feeds correlated batches to the analyzer and stores the deadlocks it
/// finds and sees end, until the writer finishes.
async fn analyse(
    analyzer: Arc<Mutex<Analyzer>>,
    mut correlated: mpsc::Receiver<Correlated>,
    unstored: Arc<AtomicU64>,
    store: Store,
    session: SessionId,
) -> Result<()> {
    // Analyzer ids of stored deadlocks, with their `deadlocks.id`.
    let mut rows: HashMap<i64, i64> = HashMap::new();
    let mut detect = tokio::time::interval(DETECT_EVERY);
    detect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let finished = tokio::select! {
            batch = correlated.recv() => match batch {
                Some(c) => {
                    lock(&analyzer).correlated(&c.events, &c.channel_ids, &c.messages, &c.signals, c.ingest_dropped);
                    false
                }
                None => true,
            },
            _ = detect.tick() => false,
        };
        let changes = {
            let mut analyzer = lock(&analyzer);
            analyzer.set_unstored(unstored.load(Ordering::Relaxed));
            analyzer.tick(monotonic_ns())
        };
        for change in changes {
            match change {
                DeadlockChange::Detected(d) => {
                    let cycle = serde_json::to_string(&d.cycle)?;
                    tracing::info!(cycle = %cycle, "deadlock detected");
                    let row = store
                        .insert_deadlock(session, d.detected_ns, &cycle)
                        .await?;
                    rows.insert(d.id, row);
                }
                DeadlockChange::Resolved { id, resolved_ns } => {
                    if let Some(row) = rows.get(&id) {
                        store.resolve_deadlock(*row, resolved_ns).await?;
                    }
                }
                DeadlockChange::Inversion(inversion) => {
                    store.insert_inversion(session, &inversion).await?;
                }
            }
        }
        if finished {
            let latencies = lock(&analyzer).session_latencies();
            store.insert_latencies(session, &latencies).await?;
            return Ok(());
        }
    }
}

fn lock(analyzer: &Mutex<Analyzer>) -> std::sync::MutexGuard<'_, Analyzer> {
    // Poisoned only by a panic in the analysis, which its task reports;
    // the state is still the best there is for the feed's last words.
    analyzer.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps the orphans of the command's tree that came to the recorder (a
/// child subreaper), on each SIGCHLD, until aborted. The command itself is
/// left to its own waiter, which reports its status.
async fn reap_orphans(command: u32) {
    let Ok(mut exits) = signal(SignalKind::child()) else {
        return;
    };
    let recorder = std::process::id();
    while exits.recv().await.is_some() {
        let Ok(table) = crate::ebpf::targets::process_table() else {
            continue;
        };
        for (pid, _) in table
            .into_iter()
            .filter(|&(pid, ppid)| ppid == recorder && pid != command)
        {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            // SAFETY: waitpid on a child of ours, without blocking; a null
            // status pointer is allowed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Asks the command to end, as a terminal's owner would.
fn terminate(child_pid: u32) {
    // SAFETY: kill has no memory effects; child_pid is our own child, not
    // yet reaped, so the pid cannot have been reused.
    unsafe { libc::kill(child_pid as i32, libc::SIGTERM) };
}

/// How often, without a command, the recorder checks whether the `-p`
/// targets are still running.
const TARGETS_POLL: Duration = Duration::from_millis(100);

/// Whether `options` name something to record, in a way that can work.
fn check_options(options: &RecordOptions) -> Result<()> {
    if !options.ebpf && options.payload_bytes > 0 {
        bail!("--payload-bytes keeps what the eBPF probes see, which --no-ebpf turns off");
    }
    if let Some(limit) = options.max_db_bytes.filter(|&l| l < MIN_DB_BYTES) {
        bail!(
            "--max-db-size: {limit} bytes is too small; give at least {}MiB (the schema and a session's aggregates need room)",
            MIN_DB_BYTES >> 20
        );
    }
    if !options.ebpf && options.kernel_ring_bytes.is_some() {
        bail!("--kernel-ring-kib sizes the eBPF probes' ring, which --no-ebpf turns off");
    }
    if options.command.is_empty() && options.pids.is_empty() && !options.all {
        bail!(
            "nothing to record: give a command (`ipcscope record -- CMD ARGS...`), \
             processes (`-p PID`), or `--all`"
        );
    }
    if !options.ebpf && (options.all || !options.pids.is_empty()) {
        bail!("-p and --all follow processes with the eBPF probes, which --no-ebpf turns off");
    }
    if options.all && !options.pids.is_empty() {
        bail!("--all already follows every process; -p cannot narrow it");
    }
    if let Some(program) = options.command.first() {
        runnable(program)?;
    }
    for &pid in &options.pids {
        if pid == 0 || !is_running(pid) {
            bail!("-p {pid}: no such process");
        }
        if pid == std::process::id() {
            bail!("-p {pid}: that is ipcscope itself, which never records itself");
        }
    }
    Ok(())
}

/// A shell's status for a command it cannot find, and for one it cannot
/// execute.
const NOT_FOUND: i32 = 127;
const NOT_EXECUTABLE: i32 = 126;

/// Whether `program` can be started, judged before anything is created: a
/// mistyped command leaves no session behind.
fn runnable(program: &OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let shown = program.to_string_lossy();
    let Some(path) = resolve_program(program) else {
        bail!("cannot run {shown}: no such command in PATH");
    };
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot run {shown}"))?;
    if meta.is_dir() {
        bail!("cannot run {shown}: it is a directory");
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("cannot run {shown}: a NUL in its name"))?;
    // SAFETY: a NUL-terminated path; faccessat reads nothing else.
    let executable = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if executable != 0 {
        bail!("cannot run {shown}: not executable (permission denied)");
    }
    Ok(())
}

/// Whether process `pid` exists (and is not a zombie waiting for its
/// parent: it does nothing more).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// What `sessions.command` says was recorded: the command, else the
/// targets as they were given.
fn session_command(options: &RecordOptions) -> String {
    if !options.command.is_empty() {
        return shell_join(&options.command);
    }
    if options.all {
        return "--all".to_owned();
    }
    options
        .pids
        .iter()
        .map(|p| format!("-p {p}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the live-feed socket goes: the user's runtime directory (owner-only by
/// definition) when there is one, else the temporary directory, inside a
/// directory of our own that is created 0700.
fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// The start and exec of the command, as the probes would have reported it.
/// Derived from what was executed rather than read from `/proc/PID`, which
/// races both ways: before the exec it shows the recorder, after a quick
/// exit the exe link is gone.
fn started_events(program: &OsStr, pid: u32, ppid: u32) -> Vec<Event> {
    let now = monotonic_ns();
    let resolved = resolve_program(program);
    // The kernel names a task after the last component of the path given to
    // execve, cut to 15 bytes; execvp passes the PATH-resolved path.
    let comm = Path::new(resolved.as_deref().unwrap_or(Path::new(program)))
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect::<String>())
        .unwrap_or_default();
    let mut start = Event::new(now, pid, pid, Source::Collector, EventKind::ProcessStart);
    start.aux = u64::from(ppid);
    start.comm = comm.clone();
    let mut exec = Event::new(now, pid, pid, Source::Collector, EventKind::ProcessExec);
    exec.comm = comm;
    exec.path = resolved
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| p.to_string_lossy().into_owned());
    vec![start, exec]
}

/// Where execvp finds `program`: itself when it has a slash, else the first
/// executable file of that name along PATH.
fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A drop record: `count` events lost by `source` (a [`drop_source`] code).
fn drop_event(source: u64, count: u64) -> Event {
    let mut e = Event::new(monotonic_ns(), 0, 0, Source::Collector, EventKind::Drop);
    e.aux = source;
    e.size = count;
    e
}

/// How often the kernel's drop counter is read.
const DROP_POLL: Duration = Duration::from_millis(100);
/// How long to keep reading after the command exits. Its own exit is in
/// the ring before waitpid returns (the tracepoint fires first), so this
/// only catches what descendants wrote in their last moments.
const DRAIN: Duration = Duration::from_millis(50);

/// Moves events from the kernel ring to the writer until told to stop, then
/// drains; returns the kernel's final drop count and the probes, whose
/// detaching (an RCU grace period per program) is left until the session
/// is stored.
fn spawn_pump(
    mut probes: Probes,
    ingest: Ingest,
) -> (oneshot::Sender<()>, JoinHandle<Result<(u64, Probes)>>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(4096);
        let mut losses = KernelLosses::default();
        let mut tick = tokio::time::interval(DROP_POLL);
        let mut scan = tokio::time::interval(blocked::SCAN_EVERY);
        let mut blocked = BlockedReceives::default();
        let mut title_scan = tokio::time::interval(titles::SCAN_EVERY);
        let mut titles = TitleScanner::default();
        let drain = tokio::time::sleep(Duration::MAX);
        tokio::pin!(drain);
        let mut stopping = false;
        let ring = ingest.source(0);
        loop {
            let mut read_through = None;
            tokio::select! {
                read = probes.read_into(&mut buf) => {
                    let stats = read.context("reading the eBPF ring buffer")?;
                    read_through = Some(stats.read_through);
                    if stats.decode_errors > 0 {
                        buf.push(drop_event(drop_source::DECODE, stats.decode_errors));
                    }
                    // Execs, forks and exits set and clear the baselines
                    // the title scan compares with.
                    for event in &buf {
                        titles.observe(event, Path::new("/proc"));
                    }
                }
                _ = tick.tick() => losses.count_new(&probes, &mut buf)?,
                // A short walk of /proc at most, and only for receives
                // newly blocked long enough: the ring holds seconds of
                // events meanwhile.
                _ = scan.tick() => {
                    blocked.scan(&probes.in_flight(), monotonic_ns(), Path::new("/proc"), &mut buf);
                }
                // Titles written into argv, which no tracepoint sees.
                _ = title_scan.tick() => {
                    let followed = probes.tracked_pids(titles::MAX_KNOWN);
                    titles.scan(&followed, Path::new("/proc"), monotonic_ns(), &mut buf);
                }
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
                _ = &mut drain => break,
            }
            // Never waits: a reader that waited for the writer would leave
            // the kernel's ring to fill and drop. A full queue is counted
            // (`ingest`) and shown instead.
            let batch = match buf.is_empty() {
                true => Vec::new(),
                false => std::mem::replace(&mut buf, Vec::with_capacity(4096)),
            };
            match read_through {
                Some(at) => ingest.try_send_batch(ring.batch(batch, at))?,
                None => ingest.try_send(batch)?,
            }
        }
        losses.count_new(&probes, &mut buf)?;
        if !buf.is_empty() {
            ingest.send(buf).await?;
        }
        Ok((losses.ring, probes))
    });
    (stop_tx, join)
}

/// The kernel's counts of lost events already turned into drop events.
#[derive(Default)]
struct KernelLosses {
    /// Records the probes could not write (`ebpf_ring`).
    ring: u64,
    /// Probe runs the kernel skipped (`ebpf_skipped`).
    skipped: u64,
}

impl KernelLosses {
    /// A drop event for each count that grew since the last call.
    fn count_new(&mut self, probes: &Probes, out: &mut Vec<Event>) -> Result<()> {
        let ring = probes
            .kernel_drops()
            .context("reading the kernel's drop counter")?;
        let skipped = probes
            .skipped_runs()
            .context("reading the probes' skipped runs")?;
        for (stored, now, source) in [
            (&mut self.ring, ring, drop_source::EBPF_RING),
            (&mut self.skipped, skipped, drop_source::EBPF_SKIPPED),
        ] {
            if now > *stored {
                out.push(drop_event(source, now - *stored));
                *stored = now;
            }
        }
        Ok(())
    }
}

/// The status a shell would report: the exit code, or 128+N for signal N.
pub fn shell_status(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// The command line as a user would type it back into a shell.
pub fn shell_join(args: &[OsString]) -> String {
    args.iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its full length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_a_shell_would_split() {
        let args: Vec<OsString> = ["sh", "-c", "sleep 0.2; exit 3", "it's", ""]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            shell_join(&args),
            r#"sh -c 'sleep 0.2; exit 3' 'it'\''s' ''"#
        );
    }

    #[test]
    fn the_command_is_named_as_the_kernel_would() {
        let events = started_events(OsStr::new("true"), 10, 1);
        assert_eq!(events[0].comm, "true");
        assert_eq!(events[0].aux, 1);
        let exe = events[1].path.as_deref().unwrap();
        assert!(exe.starts_with('/') && exe.ends_with("/true"), "{exe}");
        let long = started_events(OsStr::new("/nonexistent/a-very-long-program-name"), 10, 1);
        assert_eq!(long[0].comm, "a-very-long-pro");
        assert_eq!(long[1].path, None);
    }

    #[test]
    fn signal_deaths_map_to_128_plus_n() {
        assert_eq!(shell_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
