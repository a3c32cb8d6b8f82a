//! The `c360` command line: parse arguments, call the library, print one line on error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use c360::render::OutputFormat;
use c360::{Engine, Result, Settings};

#[derive(Parser)]
#[command(
    name = "c360",
    version,
    about = "Customer data platform engine: land, stitch, query and activate customer data in SQL"
)]
struct Cli {
    /// Config file (default: ./c360.toml when it exists).
    #[arg(long, global = true, env = "C360_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the workspace over the Postgres wire protocol and HTTP until Ctrl-C.
    Serve {
        #[command(flatten)]
        engine: EngineArgs,
        /// Postgres wire listener (default 127.0.0.1:5433); port 0 picks a free port.
        #[arg(long, env = "C360_PG")]
        pg: Option<SocketAddr>,
        /// HTTP listener (default 127.0.0.1:8080); port 0 picks a free port.
        #[arg(long, env = "C360_HTTP")]
        http: Option<SocketAddr>,
    },
    /// Run SQL against the workspace once and print the result.
    Query {
        #[command(flatten)]
        engine: EngineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// One or more `;`-separated statements.
        sql: String,
    },
    /// Load CSV, NDJSON or Parquet files into a landed table, in one atomic commit.
    Load {
        #[command(flatten)]
        engine: EngineArgs,
        /// The landed table (`landed.TABLE` in SQL), created from the first file if new.
        table: String,
        /// Files or object store URLs; the format comes from the extension (.csv with a
        /// header line, .ndjson/.jsonl/.json, .parquet).
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Receive webhook deliveries and log them: a local destination for trying triggers.
    Sink {
        /// Listener address; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Secret whose X-C360-Signature bodies must carry (repeatable; none: accept all).
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Log one line per request instead of one per message.
        #[arg(long)]
        quiet: bool,
    },
    /// Read a password on standard input and print its SCRAM-SHA-256 verifier, for the
    /// `scram` field of a `[[pg.users]]` entry in c360.toml.
    HashPassword,
    /// Write realistic multi-source demo data (and its ground truth) to a directory.
    Generate {
        /// Number of people to simulate.
        #[arg(long, default_value_t = 2_000)]
        customers: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed: the same seed writes the same files.
        #[arg(long, default_value_t = 360)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct EngineArgs {
    /// Storage root: a directory or an object store URL (default ./c360-data).
    #[arg(long, env = "C360_DATA")]
    data: Option<String>,
    /// Directory of .sql files applied in name order at start-up (default ./sql).
    #[arg(long, env = "C360_WORKSPACE")]
    workspace: Option<PathBuf>,
    /// Workspace variable, NAME=VALUE, replacing ${NAME} in the .sql files (repeatable),
    /// e.g. --var sources=/data/big to point the demo workspace at generated data.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_variable)]
    variables: Vec<(String, String)>,
}

impl EngineArgs {
    fn apply(self, settings: &mut Settings) {
        if let Some(data) = self.data {
            settings.data = data;
        }
        if let Some(workspace) = self.workspace {
            settings.workspace = workspace;
        }
        settings.variables.extend(self.variables);
    }
}

fn parse_variable(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, got '{text}'")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap prints them and they succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as for every other error; the usage is one --help away.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see c360 --help)");
            return ExitCode::from(2);
        }
    };
    // A server narrates its life; one-off commands keep stderr for what went wrong.
    init_logging(
        if matches!(cli.command, Command::Serve { .. } | Command::Sink { .. }) {
            "info"
        } else {
            "warn"
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { engine, pg, http } => {
            engine.apply(&mut settings);
            if let Some(pg) = pg {
                settings.pg.listen = pg;
            }
            if let Some(http) = http {
                settings.http.listen = http;
            }
            c360::server::serve(settings, c360::server::shutdown_signal()?).await
        }
        Command::Sink {
            listen,
            secrets,
            quiet,
        } => c360::sink::serve(listen, secrets, quiet, c360::server::shutdown_signal()?).await,
        Command::Query {
            engine,
            format,
            sql,
        } => {
            engine.apply(&mut settings);
            let engine = Engine::open(settings).await?;
            let results = engine.query(&sql).await?;
            let mut out = std::io::stdout().lock();
            for result in &results {
                c360::render::write_result(&mut out, result, format)?;
            }
            Ok(())
        }
        Command::Load {
            engine,
            table,
            files,
        } => {
            engine.apply(&mut settings);
            let engine = Engine::open_without_workspace(settings).await?;
            let progress = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {human_pos} rows loaded {per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            let started = std::time::Instant::now();
            let report = engine
                .load(&table, &files, &|rows| progress.set_position(rows))
                .await;
            progress.finish_and_clear();
            let report = report?;
            println!(
                "{} landed.{}: {} rows from {} file(s) in {:.1} s (version {})",
                if report.created {
                    "created"
                } else {
                    "appended to"
                },
                report.table,
                report.rows,
                files.len(),
                started.elapsed().as_secs_f64(),
                report.version
            );
            Ok(())
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| c360::C360Error::io("stdin", e))?;
            let password = password.trim_end_matches(['\n', '\r']);
            println!("{}", c360::pg::hash_password(password)?);
            Ok(())
        }
        Command::Generate {
            customers,
            out,
            seed,
        } => {
            let options = c360::generate::GenerateOptions {
                customers,
                out_dir: out,
                seed,
            };
            let progress = indicatif::ProgressBar::new(customers).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {human_pos}/{human_len} customers [{bar:40}] {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = std::time::Instant::now();
            let report = c360::generate::generate(&options, &progress)?;
            progress.finish_and_clear();
            let seconds = started.elapsed().as_secs_f64();
            for (table, rows) in &report.records_by_table {
                println!("{table:>20}  {rows:>12} rows");
            }
            println!(
                "{} records for {} customers in {seconds:.1} s ({:.0} records/s, {:.1} MB)",
                report.total_records,
                report.customers,
                report.total_records as f64 / seconds.max(1e-9),
                report.bytes_written as f64 / 1e6
            );
            Ok(())
        }
    }
}

/// Logs go to stderr so that `c360 query` output stays clean; `C360_LOG` sets the filter.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("C360_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
