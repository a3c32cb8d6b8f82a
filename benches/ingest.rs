//! Collector throughput: `/v1/batch` with 100-event batches from 32 keep-alive connections
//! against a real `c360 serve` (fsync'd group commit), beside the disk's own fsync rate.
//!
//! ```sh
//! cargo bench --bench ingest                    # 60 s of load, then the figures
//! cargo bench --bench ingest -- --fsync-only    # the disk's fsync rate alone
//! cargo bench --bench ingest -- --no-compaction # the same with compaction off, to compare
//! cargo bench --bench ingest -- --seconds 30 --window 5 --connections 64 --batch 100
//! cargo bench --bench ingest -- --load-csv 1024   # `c360 load` of a 1 GiB CSV, in MB/s
//! ```
//!
//! It prints, window by window (5 s by default), the acknowledged events/s, the ack latency
//! percentiles, the group commits' rate and mean latency, the server's resident memory and
//! the number of message ids the dedup window holds, the compactions so far and the data
//! files of the `events` table (compaction's backlog), so that whatever grows over a run
//! shows; then the figures of the whole run, the fsync rate measured in the same run and
//! the load average, so that figures compare run to run and machine to machine. Memory is
//! called flat when the second half of the run adds at most 5% to the server's anonymous
//! memory (heap and stacks; resident memory is printed too, but it also counts the code
//! pages of the 200 MiB binary as they are first run): the dedup window is a fixed budget
//! (`[http] dedup_max_ids`) that fills in the first half, then stays.
//!
//! `--load-csv SIZE_MB` instead writes a CSV of that size (typical CRM/order columns: text,
//! e-mails, decimals, integers, timestamps, booleans) and times `c360 load` of it, twice:
//! into a new table (types inferred) and again into the now existing one (text cast to the
//! table's types). The baseline printed beside them is reading the same file from disk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Memory is called flat when the second half of the run grows it by at most this much.
const FLAT_PERCENT: f64 = 5.0;

struct Options {
    fsync_only: bool,
    /// `--load-csv SIZE_MB`: bench `c360 load` instead of the collector.
    load_csv_mb: Option<u64>,
    /// `--no-compaction`: the server runs with `[maintenance] compact_interval_secs = 0`.
    no_compaction: bool,
    seconds: u64,
    /// `--window SECONDS`: the width of each line of the per-window table.
    window: u64,
    connections: usize,
    batch: usize,
}

fn options() -> Options {
    let mut options = Options {
        fsync_only: false,
        load_csv_mb: None,
        no_compaction: false,
        seconds: 60,
        window: 5,
        connections: 32,
        batch: 100,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |i: usize| args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
    for (i, arg) in args.iter().enumerate() {
        match arg.as_str() {
            "--fsync-only" => options.fsync_only = true,
            "--load-csv" | "--load-only" => options.load_csv_mb = Some(value(i).unwrap_or(1024)),
            "--no-compaction" => options.no_compaction = true,
            "--seconds" => options.seconds = value(i).unwrap_or(options.seconds),
            "--window" => options.window = value(i).unwrap_or(options.window),
            "--connections" => {
                options.connections = value(i).map_or(options.connections, |v| v as usize)
            }
            "--batch" => options.batch = value(i).map_or(options.batch, |v| v as usize),
            _ => {}
        }
    }
    options
}

/// fsyncs per second of small appends in `dir`: the ceiling of any durable commit rate.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        file.write_all(&[0u8; 4096]).expect("write");
        file.sync_all().expect("fsync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / started.elapsed().as_secs_f64()
}

/// `VmRSS` and `RssAnon` of `pid`, in KiB. Resident memory counts the pages of the binary's
/// code as they are first run (up to its 200 MiB, shared and reclaimable); anonymous memory
/// is the heap and stacks, where an unbounded buffer would show.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// One keep-alive connection: POST, then read the status line, headers and body.
fn post(
    stream: &mut BufReader<TcpStream>,
    head: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    stream.get_mut().write_all(head.as_bytes())?;
    stream.get_mut().write_all(body)?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((status, body))
}

/// The `c360` binary to bench: `C360_BENCH_BIN` when set (a copy of a build, safe from a
/// later build into the same target folder), else the one built with this bench.
fn server_binary() -> std::path::PathBuf {
    std::env::var_os("C360_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_c360").into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `GET /metrics` of the server, as text (empty when it does not answer).
fn scrape(addr: &str) -> String {
    let Ok(stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let mut stream = BufReader::new(stream);
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    post(&mut stream, &head, b"")
        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default()
}

/// The value of an unlabelled sample in a scrape.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The sample taken closest to `t` seconds into the run.
fn nearest(samples: &[Sample], t: f64) -> Sample {
    samples
        .iter()
        .min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
        .copied()
        .unwrap_or_default()
}

/// What the sampler saw at one second of the run.
#[derive(Clone, Copy, Default)]
struct Sample {
    at: f64,
    rss_kib: u64,
    anon_kib: u64,
    commits: f64,
    commit_seconds: f64,
    dedup_ids: f64,
    compactions: f64,
    files: f64,
}

/// Percentile `p` (0..=1) of sorted latencies, in ms.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |us| f64::from(*us) / 1e3)
}

fn main() {
    let options = options();
    let data = tempfile::tempdir().expect("tempdir");
    let fsyncs = fsync_rate(data.path());
    println!("disk: {fsyncs:.0} fsync/s (4 KiB append + fsync, in the storage root's file system)");
    if options.fsync_only {
        return;
    }
    if let Some(size_mb) = options.load_csv_mb {
        load_csv(data.path(), size_mb);
        return;
    }
    let load_at_start = loadavg();
    println!("server: {}", server_binary().display());

    let mut command = Command::new(server_binary());
    command.args([
        "serve",
        "--pg",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data",
    ]);
    command.arg(data.path().join("root"));
    if options.no_compaction {
        // The demo's settings plus compaction turned off: the baseline that tells how much
        // of the commit latency compaction costs.
        let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/c360.toml"))
            .unwrap_or_default();
        let config = data.path().join("bench.toml");
        std::fs::write(
            &config,
            format!("{demo}\n[maintenance]\ncompact_interval_secs = 0\n"),
        )
        .expect("bench config");
        command.arg("--config").arg(config);
    }
    let mut child = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("C360_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("c360 serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("banner").expect("banner line");
        if let Some(url) = line.trim().strip_prefix("health:") {
            break url
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches("/health")
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // (ms since the start when acknowledged, latency in µs), one per acknowledged request.
    let acks: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let started = Instant::now();
    let sampler = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            loop {
                let metrics = scrape(&addr);
                let (rss, anon) = rss_kib(pid);
                samples.push(Sample {
                    at: started.elapsed().as_secs_f64(),
                    rss_kib: rss,
                    anon_kib: anon,
                    commits: metric(&metrics, "c360_collector_commit_seconds_count"),
                    commit_seconds: metric(&metrics, "c360_collector_commit_seconds_sum"),
                    dedup_ids: metric(&metrics, "c360_collector_dedup_ids"),
                    compactions: metric(&metrics, "c360_storage_compactions_total"),
                    files: metric(&metrics, "c360_collector_table_files"),
                });
                if stop.load(Ordering::Relaxed) {
                    return samples;
                }
                next += Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let clients: Vec<_> = (0..options.connections)
        .map(|client| {
            let (addr, stop, events, refused, acks) = (
                addr.clone(),
                stop.clone(),
                events.clone(),
                refused.clone(),
                acks.clone(),
            );
            let batch = options.batch;
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&addr).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut stream = BufReader::new(stream);
                let mut mine = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let messages: Vec<String> = (0..batch)
                        .map(|i| {
                            format!(
                                r#"{{"type":"track","anonymousId":"bench-{client}","event":"Product Viewed","messageId":"{client}-{seq}-{i}","properties":{{"sku":"SKU-{i}","price":19.9}},"context":{{"library":{{"name":"bench"}}}}}}"#
                            )
                        })
                        .collect();
                    seq += 1;
                    let body = format!(r#"{{"batch":[{}]}}"#, messages.join(","));
                    let head = format!(
                        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let sent = Instant::now();
                    match post(&mut stream, &head, body.as_bytes()) {
                        Ok((200, _)) => {
                            let at = started.elapsed().as_millis() as u32;
                            mine.push((at, sent.elapsed().as_micros() as u32));
                            events.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("connection {client}: {e}"),
                    }
                }
                acks.lock().expect("acks").extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(options.seconds));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = sampler.join().expect("sampler thread");
    let _ = child.kill();
    let _ = child.wait();
    let load_at_end = loadavg();

    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    let total = events.load(Ordering::Relaxed);
    println!(
        "load average: {load_at_start} at start, {load_at_end} at end ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "compaction: {}",
        if options.no_compaction {
            "off ([maintenance] compact_interval_secs = 0)"
        } else {
            "on (the default)"
        }
    );

    // The run window by window, to show what grows: ack latency, commit latency, memory.
    let window = options.window.max(1) as f64;
    println!(
        "{:>7} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8} {:>9} {:>10} {:>6} {:>6}",
        "t (s)",
        "events/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "commit/s",
        "commit ms",
        "RSS MiB",
        "anon MiB",
        "dedup ids",
        "compac",
        "files"
    );
    let mut from = 0.0;
    while from < elapsed - 0.5 {
        let to = (from + window).min(elapsed);
        let mut in_window: Vec<u32> = acks
            .iter()
            .filter(|(at, _)| {
                let at = f64::from(*at) / 1e3;
                at >= from && at < to
            })
            .map(|(_, us)| *us)
            .collect();
        in_window.sort_unstable();
        let at = |t: f64| nearest(&samples, t);
        let (a, b) = (at(from), at(to));
        let commits = b.commits - a.commits;
        println!(
            "{:>7} {:>9.0} {:>7.1} {:>7.1} {:>7.1} {:>8.0} {:>9.1} {:>8} {:>9} {:>10.0} {:>6.0} {:>6.0}",
            format!("{from:.0}-{to:.0}"),
            in_window.len() as f64 * options.batch as f64 / (to - from),
            percentile(&in_window, 0.5),
            percentile(&in_window, 0.99),
            percentile(&in_window, 1.0),
            commits / (b.at - a.at).max(1e-9),
            (b.commit_seconds - a.commit_seconds) * 1e3 / commits.max(1.0),
            b.rss_kib / 1024,
            b.anon_kib / 1024,
            b.dedup_ids,
            b.compactions,
            b.files,
        );
        from = to;
    }

    let mut latencies: Vec<u32> = acks.iter().map(|(_, us)| *us).collect();
    latencies.sort_unstable();
    println!(
        "collector: {:.0} events/s acknowledged ({} connections x {}-event batches, {:.1} s), \
         {} requests refused (503)",
        total as f64 / elapsed,
        options.connections,
        options.batch,
        elapsed,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "ack latency: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms (over {:.0} s)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
        elapsed
    );
    let (first, last) = (
        samples.first().copied().unwrap_or_default(),
        samples.last().copied().unwrap_or_default(),
    );
    let commits = last.commits - first.commits;
    println!(
        "group commits: {:.0}/s, {:.0} events each, {:.1} ms each on average",
        commits / elapsed,
        total as f64 / commits.max(1.0),
        (last.commit_seconds - first.commit_seconds) * 1e3 / commits.max(1.0)
    );
    println!(
        "commits can be at most {fsyncs:.0}/s on this disk; each commit fsyncs the data file, \
         the log entry and their directories"
    );

    // Memory: flat means the second half of the run adds (almost) nothing to the heap.
    // Resident memory is shown too; it also counts the binary's code pages as they are
    // first run, which is not what a leak or an unbounded buffer would grow.
    let at = |t: f64| nearest(&samples, t);
    let (start, middle, end) = (at(0.0), at(elapsed / 2.0), at(elapsed));
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_anon = samples.iter().map(|s| s.anon_kib).max().unwrap_or(0);
    let growth = |a: u64, b: u64| (b as f64 - a as f64) / (a.max(1) as f64) * 100.0;
    println!(
        "server memory (RSS): {} MiB at start, {} MiB at {:.0} s, {} MiB at the end ({:.0} s), \
         peak {} MiB; the second half {:+.1}%",
        start.rss_kib / 1024,
        middle.rss_kib / 1024,
        elapsed / 2.0,
        end.rss_kib / 1024,
        elapsed,
        peak / 1024,
        growth(middle.rss_kib, end.rss_kib),
    );
    let anon_growth = growth(middle.anon_kib, end.anon_kib);
    println!(
        "server heap (RssAnon): {} MiB at start, {} MiB at {:.0} s, {} MiB at the end, peak {} \
         MiB; the second half {:+.1}%: {}",
        start.anon_kib / 1024,
        middle.anon_kib / 1024,
        elapsed / 2.0,
        end.anon_kib / 1024,
        peak_anon / 1024,
        anon_growth,
        if anon_growth <= FLAT_PERCENT {
            format!("flat (at most {FLAT_PERCENT}%)")
        } else {
            format!("NOT flat (more than {FLAT_PERCENT}%)")
        }
    );
    println!(
        "dedup window: {:.0} ids remembered at the end (bounded by [http] dedup_max_ids)",
        last.dedup_ids
    );
}

/// Writes a CSV of about `size_mb` MB; gives its path, size in bytes and rows.
fn write_csv(dir: &std::path::Path, size_mb: u64) -> (std::path::PathBuf, u64, u64) {
    let path = dir.join("load-bench.csv");
    let file = std::fs::File::create(&path).expect("bench CSV");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let header = "order_id,email,first_name,city,amount,quantity,ordered_at,opted_in\n";
    out.write_all(header.as_bytes()).expect("write");
    let (mut bytes, mut rows) = (header.len() as u64, 0u64);
    let names = [
        "Alice", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Gina", "Hugo",
    ];
    let cities = ["Paris", "Lyon", "Marseille", "Lille", "Nantes", "Bordeaux"];
    let target = size_mb * 1_000_000;
    let mut line = String::with_capacity(160);
    while bytes < target {
        line.clear();
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "o{rows:010},customer{}@example.org,{},{},{}.{:02},{},2025-{:02}-{:02}T{:02}:{:02}:{:02}Z,{}",
            rows % 1_000_003,
            names[(rows % 8) as usize],
            cities[(rows % 6) as usize],
            rows % 997,
            rows % 100,
            1 + rows % 9,
            1 + rows % 12,
            1 + rows % 28,
            rows % 24,
            rows % 60,
            (rows / 60) % 60,
            rows % 3 == 0
        );
        out.write_all(line.as_bytes()).expect("write");
        bytes += line.len() as u64;
        rows += 1;
    }
    out.flush().expect("flush");
    (path, bytes, rows)
}

/// Times `c360 load` of a generated CSV, into a new table and into the existing one.
fn load_csv(dir: &std::path::Path, size_mb: u64) {
    let (csv, bytes, rows) = write_csv(dir, size_mb);
    let mb = bytes as f64 / 1e6;
    println!("input: {mb:.0} MB, {rows} rows of CSV");

    // Baseline: the file read back from the page cache or disk, no parsing.
    let started = Instant::now();
    let mut file = std::fs::File::open(&csv).expect("open CSV");
    let mut buffer = vec![0u8; 1 << 20];
    while file.read(&mut buffer).expect("read") > 0 {}
    let read = started.elapsed().as_secs_f64();
    println!("baseline: reading the file {:.0} MB/s", mb / read);

    let root = dir.join("root");
    for attempt in ["new table", "existing table"] {
        let started = Instant::now();
        let out = Command::new(server_binary())
            .args(["load", "orders"])
            .arg(&csv)
            .arg("--data")
            .arg(&root)
            .env("C360_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("c360 load runs");
        assert!(out.success(), "c360 load failed");
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "c360 load ({attempt}): {:.1} s, {:.0} MB/s, {:.0} rows/s",
            seconds,
            mb / seconds,
            rows as f64 / seconds
        );
    }
}
