//! The native stitch alone, on identifier rows already in memory: where a full build's stitch
//! time goes, run after run, without the read in front of it.
//!
//! ```text
//! cargo bench --bench stitch -- [--customers N] [--data DIR] [--runs R]
//! ```
//!
//! The rows are the demo workspace's `identifiers` view over `c360 generate` data, as the graph
//! reads it, cached as Parquet beside the data (see `common::ensure_identifiers`). Each run stitches them into a fresh graph and prints the time of loading
//! (interning) and of each step after it, the graph's size and the process's peak RSS.
//! `identity.rs` measures the whole build against the issue's targets; this one is for
//! working on the stitch. Never run as a test: timing figures are printed, not asserted.

use std::path::PathBuf;
use std::time::Instant;

use c360::identity::graph::{FEED_ROWS, IdentityGraph};
use c360::identity::manager::{rows_of, rules_from_options};
use c360::identity::tables::GraphTables;
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

mod common;

use common::*;

struct Args {
    customers: u64,
    data: Option<PathBuf>,
    runs: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        customers: 1_000_000,
        data: None,
        runs: 3,
    };
    parse_flags(|name, value| {
        match name {
            "--customers" => args.customers = parse_count(&value()?)?,
            "--data" => args.data = Some(PathBuf::from(value()?)),
            "--runs" => args.runs = value()?.parse()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    {
        use tracing_subscriber::prelude::*;
        // The graph reports its steps as debug events; print just those.
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stdout)
                    .without_time()
                    .with_target(false)
                    .with_filter(tracing_subscriber::EnvFilter::new("c360::identity=debug")),
            )
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| default_data_dir(args.customers));
    println!(
        "stitch bench: {} customers, data {}, {}, {} cores, load {}",
        args.customers,
        data.display(),
        build_kind(),
        nproc(),
        loadavg()
    );
    ensure_data(&data, args.customers).await?;
    let ids_dir = ensure_identifiers(&data).await?;

    let started = Instant::now();
    let ctx = SessionContext::new();
    let batches: Vec<RecordBatch> = ctx
        .read_parquet(
            format!("{}/", ids_dir.display()),
            ParquetReadOptions::default(),
        )
        .await?
        .collect()
        .await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    println!(
        "rows: {rows} read into memory in {:.1} s",
        secs(started.elapsed())
    );
    let definition = definition_on("bench_stitch", "identifiers")?;
    let rules = rules_from_options(&definition)?;

    let mut totals = Vec::new();
    for run in 1..=args.runs {
        reset_peak_rss();
        let (_, rss_before) = memory();
        let mut graph = IdentityGraph::new(rules.clone());
        let started = Instant::now();
        let mut applying = graph.begin_apply();
        // In groups of `FEED_ROWS` rows, as the engine feeds them.
        let mut first = 0;
        while first < batches.len() {
            let mut end = first;
            let mut rows = 0;
            while end < batches.len() && rows < FEED_ROWS {
                rows += batches[end].num_rows();
                end += 1;
            }
            applying.feed(rows_of(&batches[first..end])?)?;
            first = end;
        }
        let loaded = secs(started.elapsed());
        let summary = applying.finish()?;
        let total = secs(started.elapsed());
        // The tables as the engine publishes them, built from the graph just stitched.
        let started = Instant::now();
        let (tables, _) = GraphTables::default().update(&mut graph)?;
        let tables_seconds = secs(started.elapsed());
        let table_rows: usize = tables.iter().flatten().map(RecordBatch::num_rows).sum();
        drop(tables);
        let (peak, _) = memory();
        println!(
            "run {run}: {total:.2} s (load {loaded:.2} s, rest {:.2} s), then tables \
             {tables_seconds:.2} s ({table_rows} rows): {} records, {} merges, {} profiles; \
             graph {:.2} GB, peak RSS {:.2} GB (from {:.2} GB)",
            total - loaded,
            summary.records,
            summary.merges,
            graph.profile_count(),
            gb(graph.heap_bytes() as u64),
            gb(peak),
            gb(rss_before),
        );
        totals.push(total);
    }
    totals.sort_by(f64::total_cmp);
    if let Some(median) = totals.get(totals.len() / 2) {
        println!("stitch median: {median:.2} s over {} runs", totals.len());
    }
    Ok(())
}
