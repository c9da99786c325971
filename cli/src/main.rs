//! `ipcscope`: the command line. Glue only: every piece with logic lives in
//! the `collector` (and later `tui`) libraries, where it is tested.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use collector::query::Table;
use collector::record::{record, RecordOptions};
use collector::report;
use collector::store::{default_db_path, OpenMode, SessionId, Store};
use ipc_events::raw::MAX_PAYLOAD;

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
        Ok(Store::open(&self.path()?, OpenMode::Existing).await?)
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
    /// The SQL; tables: sessions, processes, channels, events, messages,
    /// waits, signals, deadlocks, drops (see README).
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
            tracing_subscriber::EnvFilter::try_from_env("IPCSCOPE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipcscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ipcscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Record(args) => {
            let outcome = record(RecordOptions {
                db: args.db.path()?,
                name: args.name,
                command: args.command,
                ebpf: !args.no_ebpf,
                pids: args.pids,
                all: args.all,
                payload_bytes: args.payload_bytes,
            })
            .await?;
            tracing::info!(?outcome, "recorded");
            let dropped = if outcome.drops.is_empty() {
                "nothing dropped".to_owned()
            } else {
                let parts: Vec<String> = outcome
                    .drops
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect();
                format!("DROPPED {} (see `ipcscope report`)", parts.join(", "))
            };
            eprintln!(
                "ipcscope: session {} recorded: {} events, {dropped}",
                outcome.session.0, outcome.writer.events,
            );
            // Exit statuses are 0-255; 128+N for signals already fits.
            Ok(ExitCode::from(outcome.exit_status.clamp(0, 255) as u8))
        }
        Command::Sessions(args) => {
            let store = args.db.open().await?;
            let mut table = report::sessions(&mut store.read_only().await?).await?;
            print_table(&mut table, args.format)
        }
        Command::Query(args) => {
            let store = args.db.open().await?;
            let mut conn = store.read_only().await?;
            let mut table = collector::query::run(&mut conn, &args.sql).await?;
            print_table(&mut table, args.format)
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
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    collector::export::jsonl(&mut conn, session, &mut io::BufWriter::new(file))
                        .await?;
                }
                None => {
                    collector::export::jsonl(
                        &mut conn,
                        session,
                        &mut io::BufWriter::new(io::stdout().lock()),
                    )
                    .await?;
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

fn print_table(table: &mut Table, format: TableFormat) -> Result<ExitCode> {
    let text = match format {
        TableFormat::Table => {
            report::humanise(table);
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
