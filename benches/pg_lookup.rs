//! Profile lookups and a segment-style aggregate over the Postgres wire, c360 against
//! PostgreSQL 15 on the same rows, on the same machine, in the same run.
//!
//! ```sh
//! cargo bench --bench pg_lookup                                   # the bundled demo
//! C360_BENCH_SOURCES=/tmp/c360-big cargo bench --bench pg_lookup  # generated data
//! ```
//!
//! c360 serves the demo workspace (or the sources named by `C360_BENCH_SOURCES`); its
//! `profiles` and `customers_identities` are copied out with `COPY … TO STDOUT` and loaded
//! into a throwaway PostgreSQL 15 cluster (`/usr/lib/postgresql/15/bin`, run as the
//! `postgres` user when this runs as root), with B-tree indexes on the lookup keys. Both
//! then answer the same prepared lookups from `CLIENTS` concurrent connections for
//! `SECONDS` each, and the same aggregate (best of 5). Figures and ratios go to stdout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_postgres::{Client, NoTls};

const CLIENTS: usize = 32;
const SECONDS: u64 = 5;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Error> {
    let work = tempfile::tempdir()?;
    let mut c360 = C360::start(work.path())?;
    let c360_client = connect(&format!(
        "host=127.0.0.1 port={} dbname=c360 user=bench",
        c360.port
    ))
    .await?;

    let ids = column(&c360_client, "SELECT profile_id FROM profiles").await?;
    let emails = column(
        &c360_client,
        "SELECT id_value FROM customers_identities WHERE id_type = 'email'",
    )
    .await?;
    println!(
        "data: {} profiles, {} e-mail identifiers ({})",
        ids.len(),
        emails.len(),
        std::env::var("C360_BENCH_SOURCES").unwrap_or_else(|_| "bundled demo".to_string())
    );

    let pg = Postgres::start(&work.path().join("pg"))?;
    let pg_client = connect(&format!(
        "host=127.0.0.1 port={} dbname=postgres user=postgres",
        pg.port
    ))
    .await?;
    for table in ["profiles", "customers_identities"] {
        copy_table(&c360_client, &pg_client, table).await?;
    }
    pg_client
        .batch_execute(
            "CREATE UNIQUE INDEX ON profiles (profile_id); \
             CREATE INDEX ON customers_identities (id_type, id_value); ANALYZE",
        )
        .await?;

    let by_id = "SELECT * FROM profiles WHERE profile_id = $1";
    let by_email = "SELECT p.* FROM profiles p JOIN customers_identities i \
                    ON i.profile_id = p.profile_id WHERE i.id_type = 'email' AND i.id_value = $1";
    let aggregate = "SELECT last_store, count(*) AS n, sum(lifetime_value) AS value \
                     FROM profiles WHERE order_count > 0 GROUP BY last_store ORDER BY n DESC";

    let c360_dsn = format!("host=127.0.0.1 port={} dbname=c360 user=bench", c360.port);
    let pg_dsn = format!(
        "host=127.0.0.1 port={} dbname=postgres user=postgres",
        pg.port
    );
    println!(
        "\n{:<28} {:>10} {:>10} {:>12}   {:>10} {:>10} {:>12}   {:>9}",
        "workload", "c360 p50", "c360 p99", "c360 q/s", "pg p50", "pg p99", "pg q/s", "q/s ratio"
    );
    for (name, sql, keys) in [
        ("lookup by profile_id", by_id, &ids),
        ("lookup by email", by_email, &emails),
    ] {
        let keys = Arc::new(keys.clone());
        let ours = lookups(&c360_dsn, sql, Arc::clone(&keys)).await?;
        let theirs = lookups(&pg_dsn, sql, keys).await?;
        println!(
            "{:<28} {:>8.2}ms {:>8.2}ms {:>12.0}   {:>8.2}ms {:>8.2}ms {:>12.0}   {:>9.3}",
            format!("{name} ({CLIENTS} clients)"),
            ours.p50_ms,
            ours.p99_ms,
            ours.per_second,
            theirs.p50_ms,
            theirs.p99_ms,
            theirs.per_second,
            ours.per_second / theirs.per_second.max(f64::MIN_POSITIVE)
        );
    }
    let ours = best_of(&c360_client, aggregate, 5).await?;
    let theirs = best_of(&pg_client, aggregate, 5).await?;
    println!(
        "{:<28} {:>8.2}ms {:>10} {:>12}   {:>8.2}ms {:>10} {:>12}   time ratio {:.3}",
        "segment aggregate (best of 5)",
        ours,
        "",
        "",
        theirs,
        "",
        "",
        ours / theirs.max(f64::MIN_POSITIVE)
    );
    c360.stop();
    drop(pg);
    Ok(())
}

async fn connect(dsn: &str) -> Result<Client, Error> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn column(client: &Client, sql: &str) -> Result<Vec<String>, Error> {
    Ok(client
        .query(sql, &[])
        .await?
        .iter()
        .filter_map(|row| row.get::<_, Option<String>>(0))
        .collect())
}

/// Creates `table` in PostgreSQL with c360's column types and copies its rows over in CSV.
async fn copy_table(from: &Client, to: &Client, table: &str) -> Result<(), Error> {
    let columns = from.prepare(&format!("SELECT * FROM {table}")).await?;
    let definition: Vec<String> = columns
        .columns()
        .iter()
        .map(|c| format!("\"{}\" {}", c.name(), c.type_().name()))
        .collect();
    to.batch_execute(&format!("CREATE TABLE {table} ({})", definition.join(", ")))
        .await?;
    let source = from
        .copy_out(&format!("COPY {table} TO STDOUT WITH (FORMAT csv)"))
        .await?;
    let sink = to
        .copy_in(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)"))
        .await?;
    futures::pin_mut!(source);
    futures::pin_mut!(sink);
    while let Some(chunk) = source.next().await {
        sink.send(chunk?).await?;
    }
    sink.finish().await?;
    Ok(())
}

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

/// `CLIENTS` connections, each running the prepared `sql` on keys in turn for `SECONDS`.
/// Connections are opened and statements prepared before the clock starts: the figures are
/// those of an app's pool in its steady state, for both engines alike.
async fn lookups(dsn: &str, sql: &str, keys: Arc<Vec<String>>) -> Result<Figures, Error> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let client = connect(dsn).await?;
        let statement = client.prepare(sql).await?;
        clients.push((client, statement));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for (worker, (client, statement)) in clients.into_iter().enumerate() {
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker * 7919;
            while Instant::now() < deadline && !keys.is_empty() {
                let key = &keys[i % keys.len()];
                i += 31;
                let sent = Instant::now();
                let rows = client.query(&statement, &[key]).await?;
                latencies.push(sent.elapsed());
                if rows.is_empty() {
                    return Err::<_, Error>(format!("no row for {key}").into());
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Figures {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        per_second: all.len() as f64 / elapsed,
    })
}

async fn best_of(client: &Client, sql: &str, runs: usize) -> Result<f64, Error> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let started = Instant::now();
        client.simple_query(sql).await?;
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// `c360 serve` on a free port, killed when stopped or dropped.
struct C360 {
    child: Child,
    port: u16,
}

impl C360 {
    fn start(work: &Path) -> Result<C360, Error> {
        let data = work.join("c360-data");
        let mut command = Command::new(env!("CARGO_BIN_EXE_c360"));
        command
            .args([
                "serve",
                "--pg",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&data)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("C360_LOG", "warn")
            .stdout(Stdio::piped());
        if let Ok(sources) = std::env::var("C360_BENCH_SOURCES") {
            command.args(["--var", &format!("sources={sources}")]);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .ok_or("c360 serve exited before its banner")??;
            if let Some(rest) = line.trim().strip_prefix("connect:") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "-p").ok_or("no port")?;
                break words.get(at + 1).ok_or("no port")?.parse()?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(C360 { child, port })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for C360 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway PostgreSQL 15 cluster with trust authentication on loopback.
struct Postgres {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Postgres, Error> {
        std::fs::create_dir_all(dir)?;
        // initdb refuses to run as root; the Debian package brings a postgres user.
        let as_postgres = Command::new("id").arg("-u").output()?.stdout == b"0\n";
        if as_postgres {
            let parent = dir.parent().ok_or("no parent")?;
            Command::new("chmod").arg("755").arg(parent).status()?;
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir)
                .status()?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let postgres = Postgres {
            dir: dir.to_path_buf(),
            port,
            as_postgres,
        };
        let data = dir.join("data").display().to_string();
        postgres.pg(&[
            "initdb",
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ])?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c shared_buffers=512MB \
             -c max_connections=100 -c fsync=off",
            dir.display()
        );
        let log = dir.join("log").display().to_string();
        postgres.pg(&[
            "pg_ctl", "-D", &data, "-l", &log, "-o", &options, "-w", "start",
        ])?;
        Ok(postgres)
    }

    fn pg(&self, args: &[&str]) -> Result<(), Error> {
        let program = format!("{PG_BIN}/{}", args[0]);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", &program]);
            command
        } else {
            Command::new(&program)
        };
        let out = command.args(&args[1..]).stdout(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed (is postgresql-15 installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.pg(&["pg_ctl", "-D", &data, "-m", "fast", "-w", "stop"]);
    }
}
