//! `ipcscope`: the command line. Glue only: every piece with logic lives in
//! the `collector` (and later `tui`) libraries, where it is tested.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use collector::query::Table;
use collector::record::{record, record_with, RecordControl, RecordOptions, RecordOutcome};
use collector::report;
use collector::store::{default_db_path, OpenMode, SessionId, Store};
use ipc_events::raw::MAX_PAYLOAD;

mod demo;
mod replay_source;

use collector::note;

/// See the IPC between your processes: record it, query it, report on it.
#[derive(Parser, Debug)]
#[command(name = "ipcscope", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command and record its IPC: processes, messages, waits, signals.
    ///
    /// CMD runs with ipcscope's stdin, stdout and stderr, and ipcscope exits
    /// with CMD's exit status (128+N if a signal N killed it). By default the
    /// eBPF probes follow CMD and every process it forks; they need root (or
    /// CAP_BPF and CAP_PERFMON).
    ///
    /// CMD starts with the privileges ipcscope was given; ipcscope itself
    /// then keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (to read other
    /// processes' /proc/PID/fd) and CAP_KILL (to pass Ctrl-C on to CMD),
    /// plus CAP_DAC_OVERRIDE and CAP_CHOWN when the database is another
    /// user's.
    ///
    /// Once CMD has ended, the session is indexed for replay (under a
    /// second per million events), so that `ipcscope tui` opens it whole at
    /// once.
    Record(RecordArgs),
    /// List the recorded sessions.
    Sessions(SessionsArgs),
    /// Run SQL against a database (read-only: a query cannot change it).
    Query(QueryArgs),
    /// Summarise a session: processes, channels with latency percentiles and
    /// throughput, waits, signals, deadlocks and dropped events.
    Report(ReportArgs),
    /// Write a session's events out for other tools.
    Export(ExportArgs),
    /// Check what this machine allows: privileges, BPF, BTF, tracefs,
    /// tracepoints, uprobes. Exits non-zero if recording with eBPF cannot work.
    Doctor,
    /// The dashboard: a running recording of the database, live; else a
    /// recorded session, replayed with a timeline.
    Tui(TuiArgs),
    /// Record a built-in multi-process workload on ipc-lib and watch it on
    /// the dashboard: producers and a consumer on a shared-memory channel, a
    /// socket channel, an RPC pair, a semaphore-guarded counter, signals
    /// and, with --deadlock, two processes that deadlock.
    Demo(DemoArgs),
    /// The demo's conductor (started by `demo`; not for direct use).
    #[command(name = "__demo", hide = true)]
    DemoConductor {
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[arg(long)]
        deadlock: bool,
        #[arg(long)]
        truth: Option<PathBuf>,
    },
    /// One process of the demo (started by the conductor).
    #[command(name = "__demo-role", hide = true)]
    DemoRole {
        role: demo::Role,
        demo: u32,
        peer: Option<u32>,
        #[arg(long)]
        truth: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct TuiArgs {
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Args, Debug)]
struct DemoArgs {
    #[command(flatten)]
    db: DbArg,
    /// Stop after this long (e.g. `10s`) [default: until Ctrl-C]
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Do not load the eBPF probes (they are used when the privileges allow).
    #[arg(long)]
    no_ebpf: bool,
    /// Add two processes that take two semaphores in opposite orders and
    /// deadlock.
    #[arg(long)]
    deadlock: bool,
    /// No dashboard: print the report when the demo ends (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    no_tui: bool,
    /// Append what each demo process did, by its own count (messages sent
    /// and received, calls, lock acquisitions, signals), one JSON object a
    /// line, to FILE: the workload's truth to check a recording against.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DbArg {
    /// The database file [default: $XDG_DATA_HOME/ipcscope/ipcscope.db]
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

impl DbArg {
    fn path(&self) -> Result<PathBuf> {
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => {
                default_db_path().context("no --db given and neither XDG_DATA_HOME nor HOME is set")
            }
        }
    }

    async fn open(&self) -> Result<Store> {
        let store = Store::open(&self.path()?, OpenMode::Existing).await?;
        if let Some(version) = store.upgraded_from() {
            note!(
                "ipcscope: {} has schema version {version}, older than this build's {}: reading an upgraded copy; the file is left as it is (recording into it upgrades it)",
                store.path().display(),
                collector::store::schema_version()
            );
        }
        Ok(store)
    }
}

#[derive(Args, Debug)]
struct RecordArgs {
    #[command(flatten)]
    db: DbArg,
    /// A name for the session, shown by `sessions`.
    #[arg(long)]
    name: Option<String>,
    /// Do not load the eBPF probes (no privileges needed; only the command
    /// itself is seen, not its descendants).
    #[arg(long)]
    no_ebpf: bool,
    /// Watch the recording on the dashboard while it runs. The command's
    /// output goes to a file beside the database, named on exit.
    #[arg(long)]
    tui: bool,
    /// Also follow this running process and its descendants (repeatable).
    /// Without a command, record until Ctrl-C or until they all exit.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Follow every process on the machine (but ipcscope itself).
    /// Without a command, record until Ctrl-C.
    #[arg(long, conflicts_with = "pids")]
    all: bool,
    /// Keep the first N bytes of each message the probes see (0-4096;
    /// 0, the default, keeps none), in `events.payload`.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=MAX_PAYLOAD as i64))]
    payload_bytes: u16,
    /// Size the kernel's event ring: N KiB, a power of two, at least 4
    /// (default 16384, 16 MiB). A bigger ring rides out longer bursts;
    /// events that find it full are counted in `drops` as `ebpf_ring`.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(4..=1 << 20))]
    kernel_ring_kib: Option<u32>,
    /// Keep the database file under SIZE (20MiB, 1GiB, 500MB, or bytes; at
    /// least 1MiB) for a long recording: as it fills, this session's
    /// oldest raw events and messages are removed, a chunk (an eighth of
    /// SIZE) at a time, and counted in `drops` as `retention`. Its
    /// aggregates stay whole: per-second traffic per channel (what
    /// `report` counts), latency, waits, signals, deadlocks, processes.
    /// The WAL file beside it is extra (a few MiB).
    #[arg(long, value_name = "SIZE", value_parser = collector::store::parse_size)]
    max_db_size: Option<u64>,
    /// The command to run, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TableFormat {
    /// Aligned columns for people.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON array of objects keyed by column name.
    Json,
}

#[derive(Args, Debug)]
struct SessionsArgs {
    #[command(flatten)]
    db: DbArg,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    format: TableFormat,
}

#[derive(Args, Debug)]
struct QueryArgs {
    #[command(flatten)]
    db: DbArg,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    format: TableFormat,
    /// In the table format, every number as stored: durations in ns and
    /// sizes in bytes, not in units (timestamps are always exact)
    #[arg(long)]
    raw: bool,
    /// The SQL; tables: sessions, processes, channels, events, messages,
    /// waits, signals, deadlocks, drops, traffic (see README).
    sql: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct SessionArg {
    /// The session id [default: the newest]
    #[arg(long, value_name = "N")]
    session: Option<i64>,
}

impl SessionArg {
    async fn resolve(&self, store: &Store) -> Result<SessionId> {
        match self.session {
            Some(id) if store.has_session(SessionId(id)).await? => Ok(SessionId(id)),
            Some(id) => bail!(
                "{}: no session {id} (see `ipcscope sessions`)",
                store.path().display()
            ),
            None => store
                .latest_session()
                .await?
                .with_context(|| format!("{}: no sessions recorded yet", store.path().display())),
        }
    }
}

#[derive(Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    session: SessionArg,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Follow a running recording of this database: its live aggregates
    /// every second (json: one snapshot per line) until it ends.
    #[arg(long)]
    live: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportFormat {
    /// One JSON object per event, in time order.
    Jsonl,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    session: SessionArg,
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // sqlx warns of every statement slower than a second: a
            // user's own `query` over a big session is meant to be.
            tracing_subscriber::EnvFilter::try_from_env("IPCSCOPE_LOG")
                .unwrap_or_else(|_| "warn,sqlx::query=error".into()),
        )
        // Standard error, or the log file while a dashboard is shown.
        .with_writer(|| collector::notes::Writer)
        // Its report of a failed write is an `eprintln!`, which panics on
        // a hung-up terminal (see `say!`).
        .log_internal_errors(false)
        .init();
    // The demo's own processes are plain ipc-lib programs: no runtime.
    let command = match cli.command {
        Command::DemoConductor {
            duration,
            deadlock,
            truth,
        } => return exit_with(demo::conduct(duration, deadlock, truth.as_deref())),
        Command::DemoRole {
            role,
            demo,
            peer,
            truth,
        } => {
            return exit_with(
                demo::play(role, demo, peer, truth.as_deref()).map(|()| ExitCode::SUCCESS),
            )
        }
        other => other,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            note!("ipcscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_with(runtime.block_on(run(command)))
}

fn exit_with(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            note!("ipcscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a recording shown on the dashboard puts its command's output.
fn output_log(db: &std::path::Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".output.log");
    db.with_file_name(name)
}

/// Records with the dashboard showing the live feed; quitting the
/// dashboard ends the recording (the command gets SIGTERM).
async fn record_on_dashboard(options: RecordOptions) -> Result<RecordOutcome> {
    let output = options.output.clone();
    // The dashboard owns the terminal: what the recorder has to say meanwhile
    // goes to the log file beside the command's output.
    if let Some(path) = &output {
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {} for the recorder's notes", path.display()))?;
        collector::notes::to_file(log);
    }
    let (ready, socket) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let control = RecordControl {
        live_ready: Some(ready),
        stop: Some(stopped),
    };
    let recording = tokio::spawn(record_with(options, control));
    let shown = match socket.await {
        Ok(socket) => {
            let feed = collector::live::Subscription::connect(&socket)?;
            dashboard_live(feed).await
        }
        // It failed before serving anything: its error says why.
        Err(_) => Ok(()),
    };
    let _ = stop.send(true);
    // The dashboard has given the terminal back: what the recorder says
    // while it ends (indexing a big session takes seconds) shows there.
    collector::notes::to_stderr();
    let outcome = recording.await.context("the recorder panicked");
    let outcome = outcome??;
    shown?;
    summarise(&outcome);
    if let Some(path) = output {
        note!("ipcscope: the command's output is in {}", path.display());
    }
    Ok(outcome)
}

/// The dashboard on a live feed, until the user quits.
async fn dashboard_live(mut feed: collector::live::Subscription) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    // The subscription already read the hello; the dashboard checks it too.
    let hello = ipc_events::live::Frame::Hello {
        version: ipc_events::live::PROTOCOL_VERSION,
        session_id: feed.session_id(),
    };
    let _ = tx.send(Ok(hello));
    // Blocked on the socket until the recording ends; it is not waited for,
    // so quitting the dashboard never waits on the recorder. A failure (a
    // frame cut short, a recorder gone silent) is shown on the dashboard.
    std::thread::spawn(move || loop {
        let item = match feed.next_frame() {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => break,
            Err(e) => Err(e.to_string()),
        };
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            break;
        }
    });
    tokio::task::spawn_blocking(move || tui::run_live(rx, tui::Options::default()))
        .await
        .context("the dashboard panicked")?
}

/// Records, then says on stderr what was stored and what was lost.
async fn record_and_summarise(options: RecordOptions) -> Result<RecordOutcome> {
    let outcome = record(options).await?;
    summarise(&outcome);
    Ok(outcome)
}

fn summarise(outcome: &RecordOutcome) {
    tracing::info!(?outcome, "recorded");
    if !outcome.failures.is_empty() {
        for failure in &outcome.failures {
            note!("ipcscope: {failure}");
        }
        // The status is the command's, as promised; this says the
        // recording is not whole.
        note!(
            "ipcscope: session {} is incomplete; the command exited with status {}",
            outcome.session.0,
            outcome.exit_status
        );
        return;
    }
    // What retention removed on purpose, the recorder has said already.
    let lost: Vec<_> = (outcome.drops.iter())
        .filter(|(source, _)| source != collector::store::RETENTION_DROP_SOURCE)
        .collect();
    let dropped = if lost.is_empty() {
        "nothing dropped".to_owned()
    } else {
        let parts: Vec<String> = lost.iter().map(|(s, n)| format!("{s} {n}")).collect();
        format!("DROPPED {} (see `ipcscope report`)", parts.join(", "))
    };
    note!(
        "ipcscope: session {} recorded: {} events, {dropped}",
        outcome.session.0,
        outcome.writer.events,
    );
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Record(args) => {
            let db = args.db.path()?;
            let options = RecordOptions {
                output: args.tui.then(|| output_log(&db)),
                db,
                name: args.name,
                command: args.command,
                ebpf: !args.no_ebpf,
                ebpf_optional: false,
                pids: args.pids,
                all: args.all,
                payload_bytes: args.payload_bytes,
                kernel_ring_bytes: args.kernel_ring_kib.map(|kib| kib * 1024),
                max_db_bytes: args.max_db_size,
            };
            let outcome = match args.tui {
                true => record_on_dashboard(options).await?,
                false => record_and_summarise(options).await?,
            };
            // Exit statuses are 0-255; 128+N for signals already fits.
            Ok(ExitCode::from(outcome.exit_status.clamp(0, 255) as u8))
        }
        Command::Demo(args) => {
            let exe = std::env::current_exe().context("finding the ipcscope executable")?;
            let mut command = vec![exe.into_os_string(), "__demo".into()];
            if let Some(d) = args.duration {
                command.push(format!("--duration={}", humantime::format_duration(d)).into());
            }
            if args.deadlock {
                command.push("--deadlock".into());
            }
            if let Some(truth) = &args.truth {
                command.push("--truth".into());
                command.push(truth.clone().into_os_string());
            }
            let db = args.db.path()?;
            let dashboard = !args.no_tui && io::stdout().is_terminal();
            let options = RecordOptions {
                output: dashboard.then(|| output_log(&db)),
                db: db.clone(),
                name: Some("demo".to_owned()),
                command,
                ebpf: !args.no_ebpf,
                // The demo is about ipc-lib: without privileges it still
                // shows everything but the kernel's view.
                ebpf_optional: true,
                pids: Vec::new(),
                all: false,
                payload_bytes: 0,
                kernel_ring_bytes: None,
                max_db_bytes: None,
            };
            let outcome = match dashboard {
                true => record_on_dashboard(options).await?,
                false => {
                    let outcome = record_and_summarise(options).await?;
                    let store = Store::open(&db, OpenMode::Existing).await?;
                    let report =
                        report::build(&mut store.read_only().await?, outcome.session).await?;
                    write_stdout(report.to_text().as_bytes())?;
                    outcome
                }
            };
            Ok(ExitCode::from(outcome.exit_status.clamp(0, 255) as u8))
        }
        Command::Tui(args) => {
            let store = args.db.open().await?;
            if let Some((_, socket)) = store
                .live_socket(args.session.session.map(SessionId))
                .await?
            {
                match collector::live::Subscription::connect(&socket) {
                    Ok(feed) => {
                        store.close().await;
                        return dashboard_live(feed).await.map(|()| ExitCode::SUCCESS);
                    }
                    // The recorder was killed: its session is replayed.
                    Err(collector::live::LiveError::NotLive { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let session = args.session.resolve(&store).await?;
            let replay = collector::replay::Replay::open(store, session).await?;
            let source = replay_source::DbReplay::new(replay, tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || tui::run_replay(source, tui::Options::default()))
                .await
                .context("the dashboard panicked")??;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoConductor { .. } | Command::DemoRole { .. } => {
            unreachable!("the demo's processes are dispatched before the runtime starts")
        }
        Command::Sessions(args) => {
            let store = args.db.open().await?;
            let mut table = report::sessions(&mut store.read_only().await?).await?;
            print_table(&mut table, args.format, Units::Human)
        }
        Command::Query(args) => {
            let store = args.db.open().await?;
            let mut conn = store.read_only().await?;
            let mut table = collector::query::run(&mut conn, &args.sql).await?;
            let units = if args.raw { Units::Raw } else { Units::Human };
            print_table(&mut table, args.format, units)
        }
        Command::Report(args) if args.live => {
            let store = args.db.open().await?;
            let session = args.session.session.map(SessionId);
            let Some((_, socket)) = store.live_socket(session).await? else {
                bail!(
                    "{}: no recording of this database is running (`ipcscope report` without --live shows recorded sessions)",
                    store.path().display()
                );
            };
            store.close().await;
            let format = args.format;
            tokio::task::spawn_blocking(move || follow_live(&socket, format))
                .await
                .context("the live report panicked")?
        }
        Command::Report(args) => {
            let store = args.db.open().await?;
            let session = args.session.resolve(&store).await?;
            let report = report::build(&mut store.read_only().await?, session).await?;
            let text = match args.format {
                ReportFormat::Text => report.to_text(),
                ReportFormat::Json => report.to_json() + "\n",
            };
            write_stdout(text.as_bytes())
        }
        Command::Export(args) => {
            let store = args.db.open().await?;
            let session = args.session.resolve(&store).await?;
            let mut conn = store.read_only().await?;
            let ExportFormat::Jsonl = args.format;
            match &args.output {
                Some(path) => {
                    let mut file = collector::export::OutputFile::create(path, store.path())?;
                    collector::export::jsonl(
                        &mut conn,
                        session,
                        &mut io::BufWriter::new(file.writer()),
                    )
                    .await?;
                    file.finish()?;
                }
                None => {
                    let written = collector::export::jsonl(
                        &mut conn,
                        session,
                        &mut io::BufWriter::new(io::stdout().lock()),
                    )
                    .await;
                    match written {
                        // The reader has what it wanted (`export | head`).
                        Err(collector::export::ExportError::Io(e))
                            if e.kind() == io::ErrorKind::BrokenPipe => {}
                        other => {
                            other?;
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let checks = collector::platform::checks();
            let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            let mut all_ok = true;
            for check in &checks {
                all_ok &= check.ok;
                let mark = if check.ok { "ok  " } else { "FAIL" };
                println!("{mark}  {:width$}  {}", check.name, check.detail);
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Prints a live recording's state once a second until it ends.
fn follow_live(socket: &std::path::Path, format: ReportFormat) -> Result<ExitCode> {
    use ipc_events::live::Frame;
    let mut feed = collector::live::Subscription::connect(socket)?;
    let mut state = None;
    let mut printed = std::time::Instant::now() - std::time::Duration::from_secs(1);
    loop {
        let frame = feed.next_frame()?;
        let ended = matches!(frame, None | Some(Frame::End { .. }));
        match frame {
            Some(Frame::Snapshot(s)) => state = Some(*s),
            Some(Frame::Delta(d)) => {
                if let Some(s) = state.as_mut() {
                    s.apply(*d);
                }
            }
            _ => {}
        }
        let Some(s) = state.as_ref() else {
            if ended {
                bail!("the recording ended before sending its state");
            }
            continue;
        };
        if ended || printed.elapsed() >= std::time::Duration::from_secs(1) {
            printed = std::time::Instant::now();
            let text = match format {
                ReportFormat::Text => collector::report::live_text(s) + "\n",
                ReportFormat::Json => serde_json::to_string(s)? + "\n",
            };
            write_stdout(text.as_bytes())?;
        }
        if ended {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// How the table format shows durations and sizes.
enum Units {
    /// In units a person reads (`1.20 ms`, `52.0 kB`).
    Human,
    /// As stored.
    Raw,
}

fn print_table(table: &mut Table, format: TableFormat, units: Units) -> Result<ExitCode> {
    let text = match format {
        TableFormat::Table => {
            match units {
                Units::Human => report::humanise(table),
                Units::Raw => report::unknowns_shown(table),
            }
            table.to_aligned()
        }
        TableFormat::Csv => table.to_csv(),
        TableFormat::Json => table.to_json() + "\n",
    };
    write_stdout(text.as_bytes())
}

/// Writes to stdout; a closed pipe (`ipcscope query ... | head`) is not an
/// error worth a message.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    match io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other
            .map(|()| ExitCode::SUCCESS)
            .context("writing to standard output"),
    }
}
