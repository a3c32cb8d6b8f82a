//! Segments at scale, against the targets of issue 6: twenty typical segments refreshed in one
//! tick, one segment's members queried, a refresh with no input change; and the same segment
//! queries run cold, without materialization, for the ratio.
//!
//! ```text
//! cargo bench --bench segments -- --customers 1000000 [--data DIR] [--state DIR] [--skip-cold]
//!     [--sequential] [--explain SEGMENT|VIEW]…
//! ```
//!
//! 1. generate `c360 generate` data into DIR unless it is there (seed 360);
//! 2. open the demo workspace on a storage root kept in STATE (the first run builds the
//!    identity graph, `profiles` and the demo's five segments; later runs reload them), and
//!    declare fifteen more typical segments;
//! 3. restart (reopen the engine), so that no refresh can be skipped: a full tick refreshes
//!    `profiles` and then all twenty segments, each timed;
//! 4. a tick with no input change: every segment again (each one skipped);
//! 5. one segment's members queried, twenty times;
//! 6. the same twenty queries cold: `profiles` recomputed by a plain view each time.
//!
//! Never run as a test: timing figures are printed, not asserted.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use c360::Engine;
use c360::ddl::{self, QueryKind};
use common::*;

/// Typical audiences, besides the five of `sql/50_segments.sql`. The clock is the data's
/// latest order, as in the demo.
const EXTRA_SEGMENTS: [(&str, &str); 15] = [
    (
        "vip_gold",
        "SELECT profile_id, lifetime_value FROM profiles WHERE lifetime_value >= 2000",
    ),
    (
        "repeat_buyers",
        "SELECT profile_id, order_count FROM profiles WHERE order_count >= 3",
    ),
    (
        "one_time_buyers",
        "SELECT profile_id FROM profiles WHERE order_count = 1",
    ),
    (
        "never_bought",
        "SELECT profile_id FROM profiles WHERE order_count = 0 AND channels <> ''",
    ),
    (
        "email_reachable",
        "SELECT profile_id, first_name FROM profiles WHERE email_opt_in AND channels LIKE '%email%'",
    ),
    (
        "email_high_value",
        "SELECT profile_id FROM profiles WHERE email_opt_in AND lifetime_value >= 500",
    ),
    (
        "recent_buyers",
        "SELECT profile_id, last_order_at FROM profiles, (SELECT max(last_order_at) AS now FROM profiles) clock WHERE last_order_at > clock.now - INTERVAL '30 days'",
    ),
    (
        "new_profiles",
        "SELECT profile_id FROM profiles, (SELECT max(last_seen) AS now FROM profiles) clock WHERE first_seen > clock.now - INTERVAL '90 days'",
    ),
    (
        "store_only",
        "SELECT profile_id FROM profiles WHERE channels LIKE '%store%' AND channels NOT LIKE '%web%'",
    ),
    (
        "web_only",
        "SELECT profile_id FROM profiles WHERE channels LIKE '%web%' AND channels NOT LIKE '%store%'",
    ),
    (
        "omnichannel",
        "SELECT profile_id FROM profiles WHERE channels LIKE '%store%' AND channels LIKE '%web%'",
    ),
    (
        "opted_in_nameless",
        "SELECT profile_id FROM profiles WHERE email_opt_in AND first_name IS NULL",
    ),
    (
        "s05_regulars",
        "SELECT profile_id FROM profiles WHERE last_store = 'S05' AND order_count >= 2",
    ),
    (
        "lyon_shoppers",
        "SELECT p.profile_id, s.name AS store FROM profiles p JOIN stores s ON s.store_id = p.last_store WHERE s.city = 'Lyon'",
    ),
    (
        "mid_value_lapsing",
        "SELECT profile_id FROM profiles, (SELECT max(last_order_at) AS now FROM profiles) clock WHERE lifetime_value BETWEEN 200 AND 1000 AND last_order_at < clock.now - INTERVAL '90 days'",
    ),
];

struct Args {
    customers: u64,
    data: PathBuf,
    state: PathBuf,
    skip_cold: bool,
    /// One segment at a time, each timed alone (to see where one refresh spends its time).
    sequential: bool,
    /// Segments whose query plans to print with their run-time metrics (EXPLAIN ANALYZE).
    explain: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut customers = 100_000;
    let (mut data, mut state) = (None, None);
    let mut skip_cold = false;
    let mut explain = Vec::new();
    let mut sequential = false;
    parse_flags(|name, value| {
        match name {
            "--customers" => customers = parse_count(&value()?)?,
            "--data" => data = Some(PathBuf::from(value()?)),
            "--state" => state = Some(PathBuf::from(value()?)),
            "--skip-cold" => skip_cold = true,
            "--explain" => explain.push(value()?),
            "--sequential" => sequential = true,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Args {
        skip_cold,
        explain,
        sequential,
        customers,
        data: data.unwrap_or_else(|| default_data_dir(customers)),
        state: state.unwrap_or_else(|| {
            PathBuf::from(format!(
                "/tmp/c360-bench-{}-segments",
                size_label(customers)
            ))
        }),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

async fn segment_names(engine: &Engine) -> Result<Vec<String>> {
    let result = engine
        .execute("SELECT name FROM segments ORDER BY name")
        .await?;
    let mut names = Vec::new();
    for batch in &result.batches {
        let column = batch.column(0);
        let strings = datafusion::arrow::array::AsArray::as_string::<i32>(column.as_ref());
        names.extend(strings.iter().flatten().map(str::to_string));
    }
    Ok(names)
}

async fn definition_of(engine: &Engine, table: &str, name: &str) -> Result<String> {
    let result = engine
        .execute(&format!(
            "SELECT definition FROM {table} WHERE name = '{name}'"
        ))
        .await?;
    let batch = result
        .batches
        .iter()
        .find(|batch| batch.num_rows() > 0)
        .ok_or_else(|| format!("no {table} named {name}"))?;
    let strings = datafusion::arrow::array::AsArray::as_string::<i32>(batch.column(0).as_ref());
    Ok(strings.value(0).to_string())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    println!(
        "segments bench: {} customers, data {}, state {}, {}, {} cores, load {}",
        args.customers,
        args.data.display(),
        args.state.display(),
        build_kind(),
        nproc(),
        loadavg()
    );
    ensure_data(&args.data, args.customers).await?;
    let settings = demo_settings(&args.data, &args.state);

    let started = Instant::now();
    let engine = Engine::open(settings.clone()).await?;
    println!(
        "open: {:.1} s (builds on a fresh state, reloads otherwise)",
        secs(started.elapsed())
    );
    for (name, query) in EXTRA_SEGMENTS {
        let sql = format!("CREATE SEGMENT {name} REFRESH EVERY '5 minutes' AS {query}");
        let statement = ddl::parse(&sql)?.ok_or("not a c360 statement")?;
        engine.execute_c360(statement, true).await?;
    }
    let names = segment_names(&engine).await?;
    println!("{} segments declared", names.len());
    drop(engine);

    // After a restart nothing is known about the inputs, so every refresh runs in full.
    let started = Instant::now();
    let engine = Engine::open(settings).await?;
    let restart = started.elapsed();
    println!("restart: {:.1} s", secs(restart));
    let refresh = engine.refresh_engine();
    let ctx = engine.context();

    let started = Instant::now();
    let report = refresh
        .refresh(ctx, Some(QueryKind::MaterializedView), "profiles")
        .await?;
    let profiles_time = started.elapsed();
    println!(
        "tick: profiles {} rows in {:.0} ms (skipped: {})",
        report.rows,
        ms(profiles_time),
        report.skipped
    );
    // One tick, as the scheduler runs it: every segment, inputs before their readers.
    let tick_started = Instant::now();
    let outcomes = if args.sequential {
        let mut outcomes = Vec::new();
        for name in &names {
            let outcome = refresh.refresh(ctx, Some(QueryKind::Segment), name).await;
            outcomes.push((name.clone(), outcome));
        }
        outcomes
    } else {
        refresh.refresh_tick(ctx, &names).await
    };
    let tick = tick_started.elapsed();
    let mut outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|(name, outcome)| outcome.map(|report| (name, report)))
        .collect::<std::result::Result<_, _>>()?;
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, report) in &outcomes {
        let p = report.phases;
        let took = report.duration;
        println!(
            "  {name:<20} {:>8} members {:>8.0} ms  (plan {:.0}, query {:.0}, diff {:.0}, write {:.0}, publish {:.0}){}",
            report.rows,
            ms(took),
            ms(p.plan),
            ms(p.query),
            ms(p.diff),
            ms(p.write),
            ms(p.publish),
            if report.skipped { "  (skipped)" } else { "" }
        );
    }

    let mut unchanged = Vec::new();
    let mut skipped = 0;
    for name in &names {
        let started = Instant::now();
        let report = refresh.refresh(ctx, Some(QueryKind::Segment), name).await?;
        unchanged.push(started.elapsed());
        skipped += usize::from(report.skipped);
    }
    let slowest = names
        .iter()
        .zip(&unchanged)
        .max_by_key(|(_, took)| **took)
        .map(|(name, took)| format!("{name} {:.2} ms", ms(*took)))
        .unwrap_or_default();
    println!("no-change refreshes: slowest {slowest}");
    let unchanged_median = median(unchanged.clone());
    let unchanged_max = unchanged.iter().max().copied().unwrap_or_default();

    let member_query = "SELECT * FROM high_value";
    let mut member_times = Vec::new();
    let mut members = 0;
    for _ in 0..21 {
        let started = Instant::now();
        members = engine.execute(member_query).await?.row_count();
        member_times.push(started.elapsed());
    }
    let member_median = median(member_times);

    for name in &args.explain {
        // A segment's name, or a materialized view's (`profiles`).
        let query = match definition_of(&engine, "segments", name).await {
            Ok(query) => query,
            Err(_) => definition_of(&engine, "materialized_views", name).await?,
        };
        let result = engine.execute(&format!("EXPLAIN ANALYZE {query}")).await?;
        println!("\nEXPLAIN ANALYZE {name}:");
        for batch in &result.batches {
            let plans =
                datafusion::arrow::array::AsArray::as_string::<i32>(batch.column(1).as_ref());
            for plan in plans.iter().flatten() {
                println!("{plan}");
            }
        }
    }

    // Cold: the segments' own queries over a plain view of the profiles query.
    let profiles_query = definition_of(&engine, "materialized_views", "profiles").await?;
    engine
        .execute(&format!("CREATE VIEW profiles_cold AS {profiles_query}"))
        .await?;
    let word = regex::Regex::new(r"\bprofiles\b")?;
    let mut cold = Vec::new();
    let mut cold_high_value = Duration::ZERO;
    for name in names.iter().filter(|_| !args.skip_cold) {
        let query = definition_of(&engine, "segments", name).await?;
        let query = word.replace_all(&query, "profiles_cold");
        let started = Instant::now();
        let rows = engine.execute(&query).await?.row_count();
        let took = started.elapsed();
        println!("  cold {name:<20} {rows:>8} rows {:>8.0} ms", ms(took));
        if name == "high_value" {
            cold_high_value = took;
        }
        cold.push(took);
    }
    let cold_total: Duration = cold.iter().sum();

    let target = |pass: bool| mark(pass);
    println!("\n== segments bench summary ==");
    println!(
        "  {} customers, {} segments, {}; machine: {} cores, load {} at end",
        args.customers,
        names.len(),
        build_kind(),
        nproc(),
        loadavg()
    );
    println!(
        "  tick: {} segments refreshed (after a restart){:>10.2} s   target ≤ 5 s      {}",
        names.len(),
        secs(tick),
        target(tick <= Duration::from_secs(5))
    );
    println!(
        "                                                        (plus the profiles materialized view, their shared input: {:.2} s)",
        secs(profiles_time)
    );
    println!(
        "  refresh with no input change (median, max)     {:>6.2} ms, {:.2} ms  target ≤ 10 ms   {}",
        ms(unchanged_median),
        ms(unchanged_max),
        target(unchanged_median <= Duration::from_millis(10))
    );
    println!(
        "                                                        ({skipped} of {} skipped)",
        names.len()
    );
    println!(
        "  one segment's members ({member_query}, {members} rows, median of 21) {:>6.1} ms  target ≤ 50 ms   {}",
        ms(member_median),
        target(member_median <= Duration::from_millis(50))
    );
    if args.skip_cold {
        println!("  cold comparison skipped (--skip-cold)");
    } else {
        println!(
            "  cold, the same {} queries without materialization  {:>8.2} s   ratio cold/tick {:.1}×, cold/(profiles + tick) {:.1}×",
            names.len(),
            secs(cold_total),
            cold_total.as_secs_f64() / tick.as_secs_f64().max(1e-9),
            cold_total.as_secs_f64() / (tick + profiles_time).as_secs_f64().max(1e-9)
        );
        println!(
            "  cold high_value query vs its members table        {:>8.0} ms   ratio {:.0}×",
            ms(cold_high_value),
            cold_high_value.as_secs_f64() / member_median.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
