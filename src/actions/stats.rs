//! What the queue and its deliveries did since start-up, for `GET /metrics`: actions
//! enqueued and suppressed by reason, deliveries, retries and dead letters, delivery
//! latency, and the depth of each channel's queue (read from the store at each scrape).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::policy::{Decision, Reason};
use crate::prometheus::{Histogram, labelled, sample};

const REASONS: [Reason; 4] = [
    Reason::NoConsent,
    Reason::MissingField,
    Reason::TriggerCap,
    Reason::PressureCap,
];

#[derive(Debug, Default)]
pub struct QueueStats {
    enqueued: AtomicU64,
    held_out: AtomicU64,
    suppressed: [AtomicU64; REASONS.len()],
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    delivery_latency: Histogram,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl QueueStats {
    /// Counts the decisions of a committed run.
    pub fn count_decisions<'a>(&self, decisions: impl Iterator<Item = &'a Decision>) {
        for decision in decisions {
            match decision {
                Decision::Send { .. } => bump(&self.enqueued, 1),
                Decision::HoldOut => bump(&self.held_out, 1),
                Decision::Suppress(reason) => {
                    if let Some(i) = REASONS.iter().position(|r| r == reason) {
                        bump(&self.suppressed[i], 1);
                    }
                }
            }
        }
    }

    /// Counts acknowledged deliveries, with how long each waited since it was queued.
    pub fn delivered(&self, waits: impl Iterator<Item = Duration>) {
        for wait in waits {
            bump(&self.delivered, 1);
            self.delivery_latency.observe(wait);
        }
    }

    /// Counts failed attempts: those to be retried, and those dead-lettered.
    pub fn failed(&self, retried: u64, dead: u64) {
        bump(&self.retried, retried);
        bump(&self.dead, dead);
    }

    /// Renders the counters, and `depth`: `(channel, pending or in delivery)`.
    pub fn render(&self, out: &mut String, depth: Vec<(String, u64)>) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        labelled(
            out,
            "c360_actions_queued",
            "Actions pending or in delivery, per channel.",
            "gauge",
            "channel",
            depth,
        );
        sample(
            out,
            "c360_actions_enqueued_total",
            "Actions queued for delivery by trigger runs.",
            "counter",
            get(&self.enqueued),
        );
        sample(
            out,
            "c360_actions_held_out_total",
            "Rows held out of their trigger (holdout groups).",
            "counter",
            get(&self.held_out),
        );
        labelled(
            out,
            "c360_actions_suppressed_total",
            "Rows a trigger fired that policy suppressed, by reason.",
            "counter",
            "reason",
            REASONS
                .iter()
                .zip(&self.suppressed)
                .map(|(reason, count)| (reason.to_string(), get(count))),
        );
        sample(
            out,
            "c360_actions_delivered_total",
            "Actions a destination acknowledged.",
            "counter",
            get(&self.delivered),
        );
        sample(
            out,
            "c360_actions_delivery_failures_total",
            "Delivery attempts that failed and will be retried.",
            "counter",
            get(&self.retried),
        );
        sample(
            out,
            "c360_actions_dead_total",
            "Actions dead-lettered after their last attempt or a permanent refusal.",
            "counter",
            get(&self.dead),
        );
        self.delivery_latency.render(
            out,
            "c360_actions_delivery_seconds",
            "From when an action was queued to its acknowledgement by a destination.",
        );
    }
}
