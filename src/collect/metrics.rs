//! The collector's counters, rendered in the Prometheus text format for `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub received: AtomicU64,
    pub committed: AtomicU64,
    pub deduplicated: AtomicU64,
    /// Requests answered 4xx (bad input, bad key, too large).
    pub rejected: AtomicU64,
    /// Requests answered 503 (buffer full, commit too slow or failed).
    pub overloaded: AtomicU64,
    pub buffered: AtomicU64,
    /// 1 while the last event commit failed (what `/health` reports as degraded).
    pub failing: AtomicU64,
    commits: AtomicU64,
    latency_micros_sum: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
}

impl Metrics {
    pub fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_commit(&self, latency: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.latency_micros_sum
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        counter(
            "c360_collector_events_received_total",
            "Events in valid, authenticated requests.",
            "counter",
            get(&self.received),
        );
        counter(
            "c360_collector_events_committed_total",
            "Events durably committed to the events table.",
            "counter",
            get(&self.committed),
        );
        counter(
            "c360_collector_events_deduplicated_total",
            "Events acknowledged without storing, their messageId having been seen.",
            "counter",
            get(&self.deduplicated),
        );
        counter(
            "c360_collector_requests_rejected_total",
            "Requests refused with a 4xx status.",
            "counter",
            get(&self.rejected),
        );
        counter(
            "c360_collector_requests_overloaded_total",
            "Requests answered 503 with Retry-After.",
            "counter",
            get(&self.overloaded),
        );
        counter(
            "c360_collector_commit_failing",
            "1 while the last event commit failed.",
            "gauge",
            get(&self.failing),
        );
        counter(
            "c360_collector_events_buffered",
            "Events waiting for the next group commit.",
            "gauge",
            get(&self.buffered),
        );
        let name = "c360_collector_commit_seconds";
        out.push_str(&format!(
            "# HELP {name} Latency of one group commit (data file and log entry, fsync'd).\n\
             # TYPE {name} histogram\n"
        ));
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            out.push_str(&format!(
                "{name}_bucket{{le=\"{bound}\"}} {}\n",
                get(bucket)
            ));
        }
        let commits = get(&self.commits);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {commits}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {commits}\n",
            get(&self.latency_micros_sum) as f64 / 1e6
        ));
        out
    }
}
