//! The Prometheus text exposition format: counters, gauges and latency histograms that
//! `GET /metrics` renders.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0,
];

/// Appends one metric: its help, its type and one unlabelled sample.
pub fn sample(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

/// Appends one metric with a sample per label value (`label="value"`).
pub fn labelled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for (value_of_label, value) in samples {
        let value_of_label = escaped(&value_of_label);
        let _ = writeln!(out, "{name}{{{label}=\"{value_of_label}\"}} {value}");
    }
}

/// A label value as the format quotes it: names come from SQL, where a quoted identifier may
/// hold a quote, a backslash or a line break, any of which would end the sample early.
fn escaped(label_value: &str) -> std::borrow::Cow<'_, str> {
    if !label_value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(label_value);
    }
    let mut out = String::with_capacity(label_value.len() + 2);
    for c in label_value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

impl Histogram {
    pub fn observe(&self, latency: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            get(&self.sum_micros) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(2));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "Test.");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_count 2\n"), "{out}");
    }

    /// A label value holding the format's own quote, backslash or line break stays one sample.
    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        let names = ["plain", "a\"b", "c\\d", "e\nf"].map(String::from);
        labelled(
            &mut out,
            "x",
            "Test.",
            "gauge",
            "graph",
            names.map(|n| (n, 1)),
        );
        let samples: Vec<&str> = out.lines().skip(2).collect();
        assert_eq!(
            samples,
            [
                "x{graph=\"plain\"} 1",
                "x{graph=\"a\\\"b\"} 1",
                "x{graph=\"c\\\\d\"} 1",
                "x{graph=\"e\\nf\"} 1",
            ]
        );
    }
}
