//! The collector's counters, rendered in the Prometheus text format for `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::prometheus::{Histogram, sample};

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
    /// Message ids the dedup window holds (at most `[http] dedup_max_ids`).
    pub dedup_ids: AtomicU64,
    /// 1 while the last event commit failed (what `/health` reports as degraded).
    pub failing: AtomicU64,
    commit_latency: Histogram,
}

impl Metrics {
    pub fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_commit(&self, latency: Duration) {
        self.commit_latency.observe(latency);
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            sample(&mut out, name, help, kind, value);
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
        counter(
            "c360_collector_dedup_ids",
            "Message ids remembered for deduplication (at most [http] dedup_max_ids).",
            "gauge",
            get(&self.dedup_ids),
        );
        self.commit_latency.render(
            &mut out,
            "c360_collector_commit_seconds",
            "Latency of one group commit (data file and log entry, fsync'd).",
        );
        out
    }
}
