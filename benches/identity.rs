//! Identity resolution at scale: speed, memory and quality of the `customers` graph against the
//! targets of issue 3, and against the peer approach (min-label propagation in plain SQL).
//!
//! ```text
//! cargo bench --bench identity -- --customers 1000000 [--data DIR] [--skip-sql-baseline]
//!                                 [--sql-customers M] [--sql-budget SECS] [--only-incremental]
//!                                 [--lookback INTERVAL]
//! ```
//!
//! Phases, each printed as it ends, then one summary block with every figure beside its target:
//! 1. generate `c360 generate` data (seed 360) into DIR, unless DIR holds it already;
//! 2. full build: `Engine::open` on the demo workspace (`sql/`), which reads the sources,
//!    normalizes, stitches and writes the `customers` graph; peak RSS of that phase;
//! 3. where the time goes: the same read, the native stitch, the outputs and the state, apart;
//! 4. quality: pairwise precision and recall of `customers_records` against the ideal clusters
//!    (per person, the connected components of their records over shared identifier values),
//!    and the same for a naive connected-components run over all values, without rules;
//! 5. the identifiers, materialized once to Parquet sorted by `seen_at` (`ids_all`); c360 builds
//!    a graph from it three times (the median is the figure), and plain DataFusion SQL runs
//!    iterative min-label propagation over it;
//! 6. incremental refresh: a graph built on all but the latest 5% of rows (a view whose cutoff
//!    lives in a one-row table), then the cutoff moved 1% at a time and `REFRESH IDENTITY GRAPH`
//!    timed, five times; `--lookback '1 day'` gives that graph a lookback, to see what reading
//!    the window again costs each refresh.
//!
//! Never run as a test: timing figures are printed, not asserted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c360::Engine;
use c360::identity::graph::{IdentityGraph, stable_hash};
use c360::identity::manager::{RefreshReport, rows_of, rules_from_options, source_frame};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, cast, col};
use futures::StreamExt;

mod common;

use common::*;

// ---------------------------------------------------------------- arguments

struct Args {
    customers: u64,
    data: Option<PathBuf>,
    skip_sql: bool,
    /// Run the SQL comparison at this size instead of `customers`.
    sql_customers: Option<u64>,
    /// Give up on the SQL baseline after this long and run the comparison at a tenth the size.
    sql_budget: Duration,
    /// Only phase 6, on the identifiers cached beside the data: for working on refreshes.
    only_incremental: bool,
    /// The `lookback` option of the incremental graph, if any.
    lookback: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        customers: 100_000,
        data: None,
        skip_sql: false,
        sql_customers: None,
        sql_budget: Duration::from_secs(600),
        only_incremental: false,
        lookback: None,
    };
    parse_flags(|name, value| {
        match name {
            "--customers" => args.customers = parse_count(&value()?)?,
            "--data" => args.data = Some(PathBuf::from(value()?)),
            "--skip-sql-baseline" => args.skip_sql = true,
            "--only-incremental" => args.only_incremental = true,
            "--lookback" => args.lookback = Some(value()?),
            "--sql-customers" => args.sql_customers = Some(parse_count(&value()?)?),
            "--sql-budget" => args.sql_budget = Duration::from_secs(value()?.parse()?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if args.customers == 0 {
        return Err("--customers must be at least 1".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------- capturing the engine's report

/// Fields of the engine's "identity graph refreshed" log events, captured from `tracing`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<HashMap<String, String>>>>);

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.0.get("message").map(String::as_str) == Some("identity graph refreshed") {
            let at = bench_clock().elapsed().as_millis().to_string();
            fields.0.insert("at_ms".into(), at);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

impl Captured {
    fn take(&self) -> Vec<HashMap<String, String>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The bench's own clock, shared by the RSS samples and the captured events.
fn bench_clock() -> &'static Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now)
}

/// RSS sampled every 20 ms on a thread of its own, so that the peak of one phase inside
/// `Engine::open` (the graph build, not the materialized views after it) can be read.
struct RssSamples {
    samples: Arc<Mutex<Vec<(u128, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSamples {
    fn start() -> RssSamples {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (into, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, rss) = memory();
                into.lock()
                    .unwrap()
                    .push((bench_clock().elapsed().as_millis(), rss));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSamples { samples, stop }
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest RSS sampled between `from_ms` and `to_ms` of the bench clock.
    fn peak_between(&self, from_ms: u128, to_ms: u128) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| (from_ms..=to_ms).contains(at))
            .map(|&(_, rss)| rss)
            .max()
            .unwrap_or(0)
    }
}

/// "read and stitch 2.10 GB, …": the peak RSS of each phase of a report's `phases_text`
/// ("read and stitch 1.234 s, …"), laid end to end from `start_ms` of the bench clock.
fn phase_peaks(samples: &RssSamples, start_ms: u128, phases_text: &str) -> String {
    let mut from = start_ms;
    phases_text
        .split(", ")
        .filter_map(|phase| {
            let (name, took) = phase.strip_suffix(" s")?.rsplit_once(' ')?;
            let to = from + (took.parse::<f64>().ok()? * 1000.0) as u128;
            let peak = samples.peak_between(from, to);
            from = to;
            Some(format!("{name} {:.2} GB", gb(peak)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn field_u64(fields: &HashMap<String, String>, name: &str) -> u64 {
    fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------- data

/// The identifiers view as the graph reads it: text columns and `seen_at` in µs.
async fn collect_identifiers(engine: &Engine) -> Result<Vec<RecordBatch>> {
    let frame = source_frame(engine.context(), "identifiers").await?;
    Ok(frame.collect().await?)
}

/// Writes the identifiers, sorted by `seen_at`, as Parquet under `dir` and registers them as
/// `ids_all`: a landed table whose row groups a watermark can prune, as appended data would be.
async fn write_ids_all(engine: &Engine, batches: Vec<RecordBatch>, dir: &Path) -> Result<u64> {
    let ctx = engine.context();
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .ok_or("the identifiers view is empty")?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
    ctx.register_table(
        "bench_ids_mem",
        Arc::new(MemTable::try_new(schema, vec![batches])?),
    )?;
    std::fs::create_dir_all(dir)?;
    write_sorted(engine, "bench_ids_mem", dir).await?;
    ctx.deregister_table("bench_ids_mem")?;
    engine
        .execute(&format!(
            "CREATE EXTERNAL TABLE ids_all STORED AS PARQUET LOCATION '{}/'",
            dir.display()
        ))
        .await?;
    Ok(rows)
}

/// Bytes held by the batches' buffers, each buffer counted once: batches share buffers (a
/// dictionary, sliced columns, the graph's key blocks), which `get_array_memory_size` counts
/// in every batch. Buffers at the addresses in `counted` are left out (counted elsewhere).
fn distinct_buffer_bytes<'a>(
    batches: impl Iterator<Item = &'a RecordBatch>,
    counted: Vec<usize>,
) -> u64 {
    fn walk(
        data: &datafusion::arrow::array::ArrayData,
        seen: &mut std::collections::HashSet<usize>,
    ) -> u64 {
        let mut bytes = 0;
        let nulls = data.nulls().map(|n| n.buffer());
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                bytes += buffer.capacity() as u64;
            }
        }
        for child in data.child_data() {
            bytes += walk(child, seen);
        }
        bytes
    }
    let mut seen: std::collections::HashSet<usize> = counted.into_iter().collect();
    batches
        .flat_map(|batch| batch.columns().iter())
        .map(|column| walk(&column.to_data(), &mut seen))
        .sum()
}

async fn count(engine: &Engine, sql: &str) -> Result<i64> {
    let result = engine.execute(sql).await?;
    let batch = result.batches.first().ok_or("no rows")?;
    let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Int64)?;
    Ok(column
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0))
}

// ---------------------------------------------------------------- quality

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Keys are already well-mixed 64-bit hashes.
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

fn mix(a: u64, b: u64) -> u64 {
    let mut h = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

fn record_hash(key: &str) -> u64 {
    stable_hash("record", key)
}

struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }
    fn union(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}

#[derive(Clone, Copy, Default)]
struct Score {
    precision: f64,
    recall: f64,
    true_pairs: u64,
    predicted_pairs: u64,
    ideal_pairs: u64,
    clusters: u64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Pairwise precision and recall of `predicted` against `ideal` over the `counted` records.
fn score(predicted: &[u64], ideal: &[u32], counted: &[bool]) -> Score {
    let mut cells: Vec<(u64, u32)> = (0..ideal.len())
        .filter(|&i| counted[i])
        .map(|i| (predicted[i], ideal[i]))
        .collect();
    cells.sort_unstable();
    let (mut predicted_pairs, mut true_pairs, mut clusters) = (0u64, 0u64, 0u64);
    let mut i = 0;
    while i < cells.len() {
        let mut j = i;
        while j < cells.len() && cells[j].0 == cells[i].0 {
            j += 1;
        }
        predicted_pairs += pairs((j - i) as u64);
        clusters += 1;
        let mut k = i;
        while k < j {
            let mut l = k;
            while l < j && cells[l].1 == cells[k].1 {
                l += 1;
            }
            true_pairs += pairs((l - k) as u64);
            k = l;
        }
        i = j;
    }
    let mut ideal_sizes = vec![0u32; ideal.len()];
    for i in 0..ideal.len() {
        if counted[i] {
            ideal_sizes[ideal[i] as usize] += 1;
        }
    }
    let ideal_pairs: u64 = ideal_sizes.iter().map(|&n| pairs(u64::from(n))).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Score {
        precision: ratio(true_pairs, predicted_pairs),
        recall: ratio(true_pairs, ideal_pairs),
        true_pairs,
        predicted_pairs,
        ideal_pairs,
        clusters,
    }
}

struct Quality {
    c360: Score,
    naive: Score,
    /// Records with at least one usable identifier: the records scored.
    records: u64,
    ideal_clusters: u64,
    /// Scored records that `customers_records` leaves out (every identifier refused).
    unassigned: u64,
    /// Identifier rows whose record the ground truth does not know.
    unknown_records: u64,
}

async fn stream_text_pairs(
    engine: &Engine,
    frame: datafusion::dataframe::DataFrame,
    a: &str,
    b: &str,
    mut each: impl FnMut(&str, &str),
) -> Result<()> {
    let _ = engine;
    let frame = frame.select(vec![
        cast(col(a), DataType::Utf8).alias("a"),
        cast(col(b), DataType::Utf8).alias("b"),
    ])?;
    let mut stream = frame.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let (xs, ys) = (
            batch.column(0).as_string::<i32>(),
            batch.column(1).as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            if xs.is_valid(i) && ys.is_valid(i) {
                each(xs.value(i), ys.value(i));
            }
        }
    }
    Ok(())
}

async fn quality(engine: &Engine, data: &Path, ids: &[RecordBatch]) -> Result<Quality> {
    let ctx = engine.context();
    // Every source record and its person, from the generator's answer key.
    let mut record_index: IdMap<u32> = IdMap::default();
    let mut person_index: IdMap<u32> = IdMap::default();
    let mut person: Vec<u32> = Vec::new();
    let truth = ctx
        .read_parquet(
            format!("{}/ground_truth/", data.display()),
            ParquetReadOptions::default(),
        )
        .await?;
    stream_text_pairs(
        engine,
        truth,
        "record_key",
        "person_id",
        |key, person_id| {
            let next = person_index.len() as u32;
            let p = *person_index
                .entry(stable_hash("person", person_id))
                .or_insert(next);
            let next = record_index.len() as u32;
            let r = *record_index.entry(record_hash(key)).or_insert(next);
            if r as usize == person.len() {
                person.push(p);
            }
        },
    )
    .await?;
    drop(person_index);
    let n = person.len();

    // Ideal clusters: a person's records that share a value. Naive: any records that do.
    let mut counted = vec![false; n];
    let mut ideal = UnionFind::new(n);
    let mut naive = UnionFind::new(n);
    let mut ideal_first: IdMap<u32> = IdMap::default();
    let mut naive_first: IdMap<u32> = IdMap::default();
    let mut unknown_records = 0u64;
    for row in rows_of(ids)? {
        if row.id_value.trim().is_empty() || row.record_key.trim().is_empty() {
            continue;
        }
        let Some(&r) = record_index.get(&record_hash(row.record_key)) else {
            unknown_records += 1;
            continue;
        };
        counted[r as usize] = true;
        let value = stable_hash(row.id_type, row.id_value);
        let first = *naive_first.entry(value).or_insert(r);
        naive.union(first, r);
        let first = *ideal_first
            .entry(mix(value, u64::from(person[r as usize])))
            .or_insert(r);
        ideal.union(first, r);
    }
    drop((ideal_first, naive_first));

    // c360's answer.
    let mut predicted = vec![u64::MAX; n];
    let records = ctx.table("customers_records").await?;
    let mut bad_profile_ids = 0u64;
    stream_text_pairs(
        engine,
        records,
        "record_key",
        "profile_id",
        |key, profile| {
            let Some(&r) = record_index.get(&record_hash(key)) else {
                return;
            };
            match profile
                .strip_prefix("p_")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            {
                Some(id) => predicted[r as usize] = id,
                None => bad_profile_ids += 1,
            }
        },
    )
    .await?;
    if bad_profile_ids > 0 {
        println!("quality: {bad_profile_ids} profile ids are not p_<16 hex>");
    }
    drop(record_index);
    let mut unassigned = 0u64;
    for r in 0..n {
        if counted[r] && predicted[r] == u64::MAX {
            // A scored record with no profile stands alone.
            unassigned += 1;
            predicted[r] = (1 << 63) | r as u64;
        }
    }
    let ideal_roots: Vec<u32> = (0..n as u32).map(|r| ideal.find(r)).collect();
    let naive_roots: Vec<u64> = (0..n as u32).map(|r| u64::from(naive.find(r))).collect();
    let c360 = score(&predicted, &ideal_roots, &counted);
    let naive = score(&naive_roots, &ideal_roots, &counted);
    let ideal_clusters = (0..n)
        .filter(|&r| counted[r] && ideal_roots[r] == r as u32)
        .count() as u64;
    Ok(Quality {
        c360,
        naive,
        records: counted.iter().filter(|&&c| c).count() as u64,
        ideal_clusters,
        unassigned,
        unknown_records,
    })
}

// ---------------------------------------------------------------- SQL baseline

struct SqlRun {
    seconds: f64,
    prep_seconds: f64,
    iterations: u32,
    cap_hit: bool,
    components: i64,
}

const SQL_ITERATION_CAP: u32 = 30;

/// Connected components the warehouse way: records and values numbered, then
/// `label(record) = min(label over records sharing a value)` until nothing changes, each
/// iteration materialized with `CREATE TABLE … AS`. Labels only ever decrease, so the sum of
/// labels stops falling exactly when no label changed.
async fn sql_baseline(engine: &Engine, source: &str, budget: Duration) -> Result<SqlRun> {
    let started = Instant::now();
    let over = || started.elapsed() > budget;
    let statements = [
        format!(
            "CREATE TABLE sb_edges_text AS SELECT record_key AS r, id_type || chr(31) || id_value AS v \
             FROM {source} WHERE id_value IS NOT NULL AND trim(id_value) <> '' AND trim(record_key) <> ''"
        ),
        // Numbered as DISTINCT hands the keys out, the cheapest way to write it. How many
        // iterations propagation then takes depends on which record got which number, which
        // changes from run to run (9 and 14 on the same data). Numbering in key order makes
        // it 9 every time, but sorting 15M keys tripled the numbering (39 s -> 117 s) and
        // would flatter c360, so the baseline keeps the cheap form.
        "CREATE TABLE sb_rec AS SELECT r, row_number() OVER () AS rid FROM (SELECT DISTINCT r FROM sb_edges_text)".into(),
        "CREATE TABLE sb_val AS SELECT v, row_number() OVER () AS vid FROM (SELECT DISTINCT v FROM sb_edges_text)".into(),
        "CREATE TABLE sb_edges AS SELECT rec.rid, val.vid FROM sb_edges_text e \
         JOIN sb_rec rec ON e.r = rec.r JOIN sb_val val ON e.v = val.v"
            .into(),
        "DROP TABLE sb_edges_text".into(),
        "CREATE TABLE sb_label_0 AS SELECT rid, rid AS label FROM sb_rec".into(),
    ];
    for sql in &statements {
        engine.execute(sql).await?;
    }
    let prep_seconds = secs(started.elapsed());
    let mut previous = count(engine, "SELECT sum(label) FROM sb_label_0").await?;
    let mut iterations = 0;
    let mut cap_hit = true;
    while iterations < SQL_ITERATION_CAP {
        if over() {
            cleanup_sql(engine, iterations).await;
            return Err(format!(
                "over the budget of {} s after {iterations} iterations",
                budget.as_secs()
            )
            .into());
        }
        let (old, new) = (iterations, iterations + 1);
        engine
            .execute(&format!(
                "CREATE TABLE sb_label_{new} AS \
                 WITH value_label AS ( \
                   SELECT e.vid, min(l.label) AS label FROM sb_edges e JOIN sb_label_{old} l ON e.rid = l.rid GROUP BY e.vid) \
                 SELECT e.rid, min(v.label) AS label FROM sb_edges e JOIN value_label v ON e.vid = v.vid GROUP BY e.rid"
            ))
            .await?;
        engine
            .execute(&format!("DROP TABLE sb_label_{old}"))
            .await?;
        iterations = new;
        let sum = count(engine, &format!("SELECT sum(label) FROM sb_label_{new}")).await?;
        println!(
            "sql baseline: iteration {new} at {:.1} s, label sum {sum}",
            secs(started.elapsed())
        );
        if sum == previous {
            cap_hit = false;
            break;
        }
        previous = sum;
    }
    // The output a user reads: each record with its component.
    engine
        .execute(&format!(
            "CREATE TABLE sb_result AS SELECT rec.r AS record_key, l.label AS component \
             FROM sb_rec rec JOIN sb_label_{iterations} l ON rec.rid = l.rid"
        ))
        .await?;
    let seconds = secs(started.elapsed());
    let components = count(engine, "SELECT count(DISTINCT component) FROM sb_result").await?;
    cleanup_sql(engine, iterations).await;
    Ok(SqlRun {
        seconds,
        prep_seconds,
        iterations,
        cap_hit,
        components,
    })
}

async fn cleanup_sql(engine: &Engine, iteration: u32) {
    for table in [
        "sb_edges_text".to_string(),
        "sb_rec".into(),
        "sb_val".into(),
        "sb_edges".into(),
        "sb_result".into(),
        format!("sb_label_{iteration}"),
    ] {
        let _ = engine
            .execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await;
    }
}

struct Comparison {
    customers: u64,
    c360_seconds: f64,
    c360_profiles: usize,
    sql: SqlRun,
    /// Naive components over the same identifiers, computed in Rust: the SQL must agree.
    naive_components: Option<u64>,
}

/// Builds of c360's graph from `ids_all` in the comparison; their median is the figure.
const C360_BUILDS: usize = 3;

/// c360 and the SQL baseline, each building from `ids_all`.
async fn compare(
    engine: &Engine,
    customers: u64,
    budget: Duration,
    naive_components: Option<u64>,
) -> Result<Comparison> {
    // The median of a few builds: on a shared 2-core machine one build varies by a fifth.
    let mut builds = Vec::with_capacity(C360_BUILDS);
    for _ in 0..C360_BUILDS {
        let definition = definition_on("bench_all", "ids_all")?;
        let report = engine
            .identity_graphs()
            .create(engine.context(), definition, false)
            .await?;
        println!(
            "c360 from ids_all: {:.2} s ({}), {} rows, {} profiles",
            secs(report.duration),
            report.phases_text(),
            report.rows_read,
            report.profiles
        );
        engine.execute("DROP IDENTITY GRAPH bench_all").await?;
        builds.push((secs(report.duration), report.profiles));
    }
    builds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (c360_seconds, c360_profiles) = builds[builds.len() / 2];
    let sql = sql_baseline(engine, "ids_all", budget).await?;
    Ok(Comparison {
        customers,
        c360_seconds,
        c360_profiles,
        sql,
        naive_components,
    })
}

/// The comparison on its own, smaller data set: generate, open, materialize, compare.
async fn compare_at(customers: u64, budget: Duration) -> Result<Comparison> {
    let data = default_data_dir(customers);
    ensure_data(&data, customers).await?;
    let storage = tempfile::tempdir()?;
    let engine = Engine::open(demo_settings(&data, storage.path())).await?;
    let ids = collect_identifiers(&engine).await?;
    write_ids_all(&engine, ids, &storage.path().join("bench/ids_all")).await?;
    compare(&engine, customers, budget, None).await
}

// ---------------------------------------------------------------- incremental

struct Incremental {
    build: RefreshReport,
    refresh: RefreshReport,
    /// The median refresh (of `REFRESHES`) and its time.
    refresh_wall: f64,
    refresh_walls: Vec<f64>,
    /// Profiles after the last refresh, when every row is in.
    final_profiles: usize,
    /// New rows per refresh.
    new_rows: i64,
    total_rows: i64,
}

/// Refreshes timed one after another, each on 1% more rows: the figure is their median. The
/// first refresh after a build always takes longest (it grows the graph's vectors and faults
/// in the tables' spare buffers, see `tables.rs`), so with three the median was the slower of
/// the two others; five give the steady state, and every one is printed.
const REFRESHES: i64 = 5;

/// The CLOCK_MONOTONIC time, which `perf record -k mono` stamps samples with: printed around
/// each refresh so that a profile of the whole run can be cut to them (`perf report --time`).
fn monotonic() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

async fn incremental(engine: &Engine, lookback: Option<&str>) -> Result<Incremental> {
    let total_rows = count(engine, "SELECT count(*) FROM ids_all").await?;
    let step = (total_rows / 100).max(1);
    // The seen_at below which the newest `offset` rows lie.
    let cutoff = |offset: i64| {
        format!("SELECT seen_at FROM ids_all ORDER BY seen_at DESC LIMIT 1 OFFSET {offset}")
    };
    engine
        .execute(&format!(
            "CREATE TABLE bench_cutoff AS SELECT seen_at AS ts FROM ({}) AS newest",
            cutoff(step * REFRESHES)
        ))
        .await?;
    engine
        .execute(
            "CREATE VIEW ids_live AS SELECT record_key, id_type, id_value, seen_at FROM ids_all \
             WHERE seen_at <= (SELECT max(ts) FROM bench_cutoff)",
        )
        .await?;
    let live_rows = count(engine, "SELECT count(*) FROM ids_live").await?;
    let mut definition = definition_on("bench_live", "ids_live")?;
    if let Some(lookback) = lookback {
        definition
            .options
            .insert("lookback".to_string(), lookback.to_string());
    }
    let build = engine
        .identity_graphs()
        .create(engine.context(), definition, false)
        .await?;
    println!(
        "incremental: built on {live_rows} of {total_rows} rows in {:.2} s, {} profiles ({}), \
         lookback {}",
        secs(build.duration),
        build.profiles,
        build.phases_text(),
        lookback.unwrap_or("none")
    );
    let mut refreshes = Vec::new();
    let mut live = live_rows;
    for left in (0..REFRESHES).rev() {
        // New data lands: the cutoff moves 1% of the rows on (past everything, the last time).
        let next = if left == 0 {
            "SELECT max(seen_at) FROM ids_all".to_string()
        } else {
            cutoff(step * left)
        };
        engine
            .execute(&format!("INSERT INTO bench_cutoff {next}"))
            .await?;
        let now_live = count(engine, "SELECT count(*) FROM ids_live").await?;
        let started = Instant::now();
        let window = monotonic();
        let refresh = engine
            .identity_graphs()
            .refresh(engine.context(), "bench_live")
            .await?;
        let wall = secs(started.elapsed());
        println!(
            "incremental: refresh of {} new rows read {} rows ({} logged), {} records applied, \
             {} merges, in {wall:.3} s ({}); perf window {window:.3},{:.3}",
            now_live - live,
            refresh.rows_read,
            refresh.rows_logged,
            refresh.summary.records,
            refresh.summary.merges,
            refresh.phases_text(),
            monotonic()
        );
        live = now_live;
        refreshes.push((wall, refresh));
    }
    let final_profiles = refreshes.last().map_or(0, |(_, last)| last.profiles);
    let mut walls: Vec<f64> = refreshes.iter().map(|(wall, _)| *wall).collect();
    walls.sort_by(f64::total_cmp);
    let median = walls[walls.len() / 2];
    let (_, refresh) = refreshes
        .into_iter()
        .find(|(wall, _)| *wall == median)
        .ok_or("no refresh ran")?;
    Ok(Incremental {
        build,
        refresh,
        refresh_wall: median,
        refresh_walls: walls,
        final_profiles,
        new_rows: (total_rows - live_rows) / REFRESHES,
        total_rows,
    })
}

/// Phase 6 alone, on an engine with an empty workspace and `ids_all` over the identifiers
/// cached beside the data: a minute instead of ten, for working on refreshes.
async fn only_incremental(data: &Path, lookback: Option<&str>) -> Result<()> {
    let ids_dir = ensure_identifiers(data).await?;
    let storage = tempfile::tempdir()?;
    let workspace = tempfile::tempdir()?;
    let mut settings = demo_settings(data, storage.path());
    settings.workspace = workspace.path().to_path_buf();
    let engine = Engine::open(settings).await?;
    engine
        .execute(&format!(
            "CREATE EXTERNAL TABLE ids_all STORED AS PARQUET LOCATION '{}/'",
            ids_dir.display()
        ))
        .await?;
    let run = incremental(&engine, lookback).await?;
    println!(
        "incremental refresh (1% new, median of {}): {:.3} s; refreshes {}",
        run.refresh_walls.len(),
        run.refresh_wall,
        run.refresh_walls
            .iter()
            .map(|wall| format!("{wall:.3} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let args = parse_args()?;
    let captured = Captured::default();
    {
        use tracing_subscriber::prelude::*;
        let verbose = std::env::var("RUST_LOG").is_ok().then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        // The capture reads info events only: a layer that took every event would make the
        // `log` bridge format DataFusion's debug logs, which cost refreshes 5%.
        tracing_subscriber::registry()
            .with(
                captured
                    .clone()
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .with(verbose)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, captured))
}

async fn run(args: Args, captured: Captured) -> Result<()> {
    let load_at_start = loadavg();
    let n = args.customers;
    let data = args.data.clone().unwrap_or_else(|| default_data_dir(n));
    println!(
        "identity bench: {n} customers, data {}, {} build, {} cores, load {load_at_start}",
        data.display(),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        nproc()
    );
    ensure_data(&data, n).await?;
    if args.only_incremental {
        return only_incremental(&data, args.lookback.as_deref()).await;
    }

    // ---- full build, as start-up does it
    let storage = tempfile::tempdir()?;
    let peak_reset = reset_peak_rss();
    let rss_samples = RssSamples::start();
    let started = Instant::now();
    let engine = Engine::open(demo_settings(&data, storage.path())).await?;
    let open_seconds = secs(started.elapsed());
    let (peak_rss, rss_after) = memory();
    let build = captured
        .take()
        .into_iter()
        .find(|f| f.get("graph").map(String::as_str) == Some("customers"))
        .ok_or("the workspace did not report building the customers graph")?;
    let build_seconds = field_u64(&build, "ms") as f64 / 1000.0;
    let build_end = u128::from(field_u64(&build, "at_ms"));
    let build_start = build_end.saturating_sub(u128::from(field_u64(&build, "ms")));
    rss_samples.stop();
    let build_peak_rss = rss_samples.peak_between(build_start, build_end);
    println!(
        "full build: engine open {open_seconds:.2} s, graph build {build_seconds:.2} s: {} rows read, \
         {} records, {} merges, {} refused, {} profiles; peak RSS during the graph build {:.2} GB; \
         engine open peak RSS {:.2} GB{}, RSS after {:.2} GB",
        field_u64(&build, "rows"),
        field_u64(&build, "records"),
        field_u64(&build, "merges"),
        field_u64(&build, "refused"),
        field_u64(&build, "profiles"),
        gb(build_peak_rss),
        gb(peak_rss),
        if peak_reset {
            ""
        } else {
            " (includes generation: clear_refs failed)"
        },
        gb(rss_after),
    );
    if let Some(phases) = build.get("phases") {
        println!(
            "full build: peak RSS by phase: {}",
            phase_peaks(&rss_samples, build_start, phases)
        );
    }

    // ---- where the time goes
    let started = Instant::now();
    let read_window = monotonic();
    let ids = collect_identifiers(&engine).await?;
    let read_seconds = secs(started.elapsed());
    let stitch_window = monotonic();
    let id_rows: usize = ids.iter().map(RecordBatch::num_rows).sum();
    let definition = definition_on("customers", "identifiers")?;
    let rules = rules_from_options(&definition)?;
    let mut graph = IdentityGraph::new(rules);
    let started = Instant::now();
    let summary = graph.apply(rows_of(&ids)?)?;
    let stitch_seconds = secs(started.elapsed());
    println!(
        "perf windows: read {read_window:.3},{stitch_window:.3}, stitch {stitch_window:.3},{:.3}",
        monotonic()
    );
    let graph_heap = graph.heap_bytes();
    let started = Instant::now();
    // The tables as the engine publishes them.
    let (outputs, _) = c360::identity::tables::GraphTables::default().update(&mut graph)?;
    let outputs_seconds = secs(started.elapsed());
    let output_rows: usize = outputs.iter().flatten().map(RecordBatch::num_rows).sum();
    // Key blocks the tables share with the graph count in the graph's figure.
    let output_bytes =
        distinct_buffer_bytes(outputs.iter().flatten(), graph.shared_block_addresses());
    drop(outputs);
    let started = Instant::now();
    c360::identity::manager::write_state(engine.storage(), "bench/state", &graph, &[]).await?;
    let state_seconds = secs(started.elapsed());
    engine.storage().delete_prefix("bench/state").await?;
    drop(graph);
    println!(
        "breakdown: read+normalize {read_seconds:.2} s ({id_rows} rows), stitch {stitch_seconds:.2} s \
         ({} records, {} merges, {} refused), outputs {outputs_seconds:.2} s ({output_rows} rows), \
         state built and written {state_seconds:.2} s; \
         memory: graph {:.2} GB, tables {:.2} GB",
        summary.records,
        summary.merges,
        summary.refused,
        gb(graph_heap as u64),
        gb(output_bytes)
    );

    // ---- quality
    let started = Instant::now();
    let quality = quality(&engine, &data, &ids).await?;
    println!(
        "quality ({:.1} s): {} records with identifiers, {} ideal clusters, {} ideal pairs; \
         c360 {} profiles, {} predicted pairs, {} true, precision {:.5} recall {:.5} ({} unassigned records); \
         naive components {} clusters, precision {:.5} recall {:.5}{}",
        secs(started.elapsed()),
        quality.records,
        quality.ideal_clusters,
        quality.c360.ideal_pairs,
        quality.c360.clusters,
        quality.c360.predicted_pairs,
        quality.c360.true_pairs,
        quality.c360.precision,
        quality.c360.recall,
        quality.unassigned,
        quality.naive.clusters,
        quality.naive.precision,
        quality.naive.recall,
        if quality.unknown_records > 0 {
            format!(
                "; {} identifier rows of records unknown to ground_truth",
                quality.unknown_records
            )
        } else {
            String::new()
        }
    );

    // ---- the identifiers as a landed Parquet table
    let started = Instant::now();
    let ids_dir = storage.path().join("bench/ids_all");
    write_ids_all(&engine, ids, &ids_dir).await?;
    println!(
        "ids_all: {id_rows} rows written sorted by seen_at in {:.1} s",
        secs(started.elapsed())
    );

    // ---- SQL baseline
    let mut comparison: Option<Comparison> = None;
    let mut sql_note = String::new();
    if args.skip_sql {
        sql_note = "skipped (--skip-sql-baseline)".into();
    } else {
        let small = args.sql_customers.filter(|&m| m != n);
        let attempt = match small {
            Some(m) => {
                sql_note = format!("run at {m} customers (--sql-customers)");
                compare_at(m, Duration::from_secs(u64::MAX / 4)).await
            }
            None => compare(&engine, n, args.sql_budget, Some(quality.naive.clusters)).await,
        };
        match attempt {
            Ok(c) => comparison = Some(c),
            Err(e) if small.is_none() => {
                let m = (n / 10).max(1000);
                println!("sql baseline at {n}: {e}; running the comparison at {m} customers");
                sql_note = format!(
                    "at {n} customers the SQL baseline went over {} s ({e}); both engines run at {m}",
                    args.sql_budget.as_secs()
                );
                comparison = Some(compare_at(m, Duration::from_secs(u64::MAX / 4)).await?);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(c) = &comparison {
        println!(
            "sql baseline at {} customers: {:.1} s ({:.1} s numbering records and values), {} iterations{}, \
             {} components; c360 {:.2} s, {} profiles; ratio {:.1}×",
            c.customers,
            c.sql.seconds,
            c.sql.prep_seconds,
            c.sql.iterations,
            if c.sql.cap_hit {
                " (CAP HIT: not converged)"
            } else {
                ""
            },
            c.sql.components,
            c.c360_seconds,
            c.c360_profiles,
            c.sql.seconds / c.c360_seconds
        );
        if let Some(naive) = c.naive_components
            && naive as i64 != c.sql.components
            && !c.sql.cap_hit
        {
            println!(
                "sql baseline: WARNING {} components, the naive union-find found {naive}",
                c.sql.components
            );
        }
    }

    // ---- incremental refresh
    let inc = incremental(&engine, args.lookback.as_deref()).await?;

    // ---- summary
    let load_at_end = loadavg();
    let target_line = |name: &str, value: String, target: &str, pass: bool| {
        println!(
            "  {name:<34} {value:>22}   target {target:<10} {}",
            mark(pass)
        );
    };
    println!();
    println!("== identity bench summary ==");
    println!(
        "  {n} customers, {} identifier rows, {} build; machine: {} cores, load avg {load_at_start} at start, {load_at_end} at end",
        id_rows,
        if cfg!(debug_assertions) {
            "DEBUG (figures not meaningful)"
        } else {
            "release"
        },
        nproc()
    );
    target_line(
        "full build (read→write outputs)",
        format!("{build_seconds:.2} s"),
        "≤ 6 s",
        build_seconds <= 6.0,
    );
    println!(
        "  {:<34} {:>22}   ({} rows read, {} records, {} profiles; engine open {open_seconds:.2} s)",
        "",
        "",
        field_u64(&build, "rows"),
        field_u64(&build, "records"),
        field_u64(&build, "profiles"),
    );
    println!(
        "  {:<34} {:>22}   (apart: read+normalize {read_seconds:.2} s, stitch {stitch_seconds:.2} s, outputs {outputs_seconds:.2} s, state {state_seconds:.2} s)",
        "", ""
    );
    target_line(
        "peak RSS (graph build)",
        format!("{:.2} GB", gb(build_peak_rss)),
        "≤ 1.5 GB",
        gb(build_peak_rss) <= 1.5,
    );
    println!(
        "  {:<34} {:>22}   (engine open, the profiles view and segments included: {:.2} GB)",
        "",
        "",
        gb(peak_rss)
    );
    target_line(
        "incremental refresh (1% new, median)",
        format!("{:.3} s", inc.refresh_wall),
        "≤ 0.5 s",
        inc.refresh_wall <= 0.5,
    );
    println!(
        "  {:<34} {:>22}   (refreshes {}; about {} of {} rows new each; median: {} rows read, {} records applied; profiles {} → {})",
        "",
        "",
        inc.refresh_walls
            .iter()
            .map(|wall| format!("{wall:.3} s"))
            .collect::<Vec<_>>()
            .join(", "),
        inc.new_rows,
        inc.total_rows,
        inc.refresh.rows_read,
        inc.refresh.summary.records,
        inc.build.profiles,
        inc.final_profiles
    );
    if let Some(c) = comparison.as_ref().filter(|c| c.customers == n) {
        println!(
            "  {:<34} {:>22}   (a full build on the same rows has {} profiles: {})",
            "",
            "",
            c.c360_profiles,
            if c.c360_profiles == inc.final_profiles {
                "same"
            } else {
                "DIFFERENT"
            }
        );
    }
    target_line(
        "precision",
        format!("{:.5}", quality.c360.precision),
        "≥ 0.995",
        quality.c360.precision >= 0.995,
    );
    target_line(
        "recall",
        format!("{:.5}", quality.c360.recall),
        "≥ 0.995",
        quality.c360.recall >= 0.995,
    );
    println!(
        "  {:<34} {:>22}   (naive components: precision {:.5}, recall {:.5})",
        "", "", quality.naive.precision, quality.naive.recall
    );
    match &comparison {
        Some(c) => {
            let ratio = c.sql.seconds / c.c360_seconds;
            target_line(
                "vs SQL label propagation",
                format!("{ratio:.1}×"),
                "≥ 10×",
                ratio >= 10.0,
            );
            println!(
                "  {:<34} {:>22}   (SQL {:.1} s, {} iterations{}, vs c360 {:.2} s (median of {C360_BUILDS}), at {} customers{})",
                "",
                "",
                c.sql.seconds,
                c.sql.iterations,
                if c.sql.cap_hit { ", cap hit" } else { "" },
                c.c360_seconds,
                c.customers,
                if sql_note.is_empty() {
                    String::new()
                } else {
                    format!("; {sql_note}")
                }
            );
        }
        None => println!(
            "  {:<34} {:>22}   {sql_note}",
            "vs SQL label propagation", "—"
        ),
    }
    drop(engine);
    Ok(())
}
