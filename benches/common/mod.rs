//! What the scale benchmarks share: generated data, the demo workspace's settings, and the
//! machine's figures (memory, load).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use c360::Settings;

pub type Error = Box<dyn std::error::Error>;
pub type Result<T> = std::result::Result<T, Error>;

/// Walks the bench's command line: `flag(name, value)` takes each `--name`, calling `value`
/// for its argument when it has one, and says whether it knew the flag. cargo's `--bench`
/// and libtest's positional arguments are skipped; an unknown flag is an error.
pub fn parse_flags(
    mut flag: impl FnMut(&str, &mut dyn FnMut() -> Result<String>) -> Result<bool>,
) -> Result<()> {
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg.starts_with("--bench") || !arg.starts_with("--") {
            continue;
        }
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value").into())
        };
        if !flag(&arg, &mut value)? {
            return Err(format!("unknown argument {arg}").into());
        }
    }
    Ok(())
}

/// A count given as `1000000` or `1_000_000`.
pub fn parse_count(text: &str) -> Result<u64> {
    Ok(text.replace('_', "").parse()?)
}

pub const SEED: u64 = 360;
pub const MARKER: &str = ".c360-bench";

pub fn size_label(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

pub fn default_data_dir(n: u64) -> PathBuf {
    PathBuf::from(format!("/tmp/c360-bench-{}", size_label(n)))
}

// ---------------------------------------------------------------- machine

/// `VmHWM` (peak RSS) and `VmRSS` of this process, in bytes.
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0); false where not supported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Which profile this bench was built with: its figures mean something in release only.
pub fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG build (figures not comparable: run with cargo bench)"
    } else {
        "release build"
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn gb(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub async fn ensure_data(dir: &Path, customers: u64) -> Result<()> {
    let marker = dir.join(MARKER);
    let expected = format!("customers={customers} seed={SEED}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str()) {
        println!("data: reusing {} ({customers} customers)", dir.display());
        return Ok(());
    }
    // Another size (or a half-written run) may be there: remove what generate writes.
    for sub in ["events", "pos_sales", "pos_sale_items", "ground_truth"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    for file in [
        "crm_contacts.csv",
        "support_tickets.ndjson",
        "products.csv",
        "stores.csv",
        MARKER,
    ] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::create_dir_all(dir)?;
    println!(
        "data: generating {customers} customers into {} …",
        dir.display()
    );
    let started = Instant::now();
    let options = c360::generate::GenerateOptions {
        customers,
        out_dir: dir.to_path_buf(),
        seed: SEED,
    };
    let report = tokio::task::spawn_blocking(move || {
        c360::generate::generate(&options, &indicatif::ProgressBar::hidden())
    })
    .await??;
    std::fs::write(&marker, expected)?;
    println!(
        "data: {} source records, {:.1} MB, in {:.1} s",
        report.total_records,
        report.bytes_written as f64 / 1e6,
        secs(started.elapsed())
    );
    Ok(())
}

pub fn demo_settings(sources: &Path, storage: &Path) -> Settings {
    let mut settings = Settings {
        data: storage.display().to_string(),
        workspace: Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"),
        ..Settings::default()
    };
    settings
        .variables
        .insert("sources".into(), sources.display().to_string());
    settings
}

pub fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

// ---------------------------------------------------------------- the demo graph

/// The demo workspace's `CREATE IDENTITY GRAPH customers …`, as written in `sql/`.
pub fn customers_definition() -> Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for statement in c360::workspace::split_statements(&text) {
            if let Ok(Some(c360::ddl::Statement::CreateIdentityGraph(def))) =
                c360::ddl::parse(&statement.sql)
                && def.name == "customers"
            {
                return Ok(statement.sql);
            }
        }
    }
    Err("no CREATE IDENTITY GRAPH customers in sql/".into())
}

/// The same definition on another name and source, without a schedule.
pub fn definition_on(name: &str, source: &str) -> Result<c360::ddl::IdentityGraphDefinition> {
    let sql = customers_definition()?;
    let Some(c360::ddl::Statement::CreateIdentityGraph(mut def)) = c360::ddl::parse(&sql)? else {
        return Err("not a CREATE IDENTITY GRAPH".into());
    };
    def.name = name.to_string();
    def.source = source.to_string();
    def.every = None;
    def.or_replace = true;
    Ok(def)
}

/// The demo's identifier rows as the graph reads them (text columns, `seen_at` in µs), sorted
/// by `seen_at` and record key, as Parquet in `<data>-identifiers/`: row groups of 65536 rows
/// that a watermark can prune, as landed data would be. Written once, which takes one engine
/// start on the demo workspace; returns the folder.
pub async fn ensure_identifiers(data: &Path) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("{}-identifiers", data.display()));
    let done = dir.join(".sorted");
    if done.exists() {
        return Ok(dir);
    }
    println!(
        "identifiers: writing {} (one engine start) …",
        dir.display()
    );
    let started = Instant::now();
    let storage = tempfile::tempdir()?;
    let engine = c360::Engine::open(demo_settings(data, storage.path())).await?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let frame = c360::identity::manager::source_frame(engine.context(), "identifiers").await?;
    engine
        .context()
        .register_table("bench_identifiers", frame.into_view())?;
    write_sorted(&engine, "bench_identifiers", &dir).await?;
    std::fs::write(&done, "")?;
    println!("identifiers: written in {:.1} s", secs(started.elapsed()));
    Ok(dir)
}

/// Writes identifier rows from `table` as Parquet under `dir`, sorted by `seen_at` and record
/// key, in row groups of 65536 rows that a watermark can prune, as landed data would be.
pub async fn write_sorted(engine: &c360::Engine, table: &str, dir: &Path) -> Result<()> {
    engine
        .execute(&format!(
            "COPY (SELECT * FROM {table} ORDER BY seen_at, record_key) TO '{}/' \
             STORED AS PARQUET OPTIONS ('format.max_row_group_size' '65536')",
            dir.display()
        ))
        .await?;
    Ok(())
}
