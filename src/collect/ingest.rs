//! Group commit: the path from an accepted request to a durable row.
//!
//! Requests add their events to one open *generation*; a single committer task takes the
//! whole generation, writes it as one data file plus one log entry (fsync'd), and then
//! wakes every request of that generation. While it commits, the next generation fills, so
//! the commit rate follows the disk and each request pays about one fsync however many
//! requests there are. The open generation is bounded: when it is full, requests are turned
//! away with 503 rather than held in unbounded memory.
//!
//! Deduplication by `messageId` remembers, for each id, the generation that accepted it. A
//! repeat of an id whose generation is still being committed waits for that commit, so that
//! a 200 always means durable, even for a duplicate.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::metrics::Metrics;
use crate::sources::events::{self, EventRow};
use crate::storage::table::LandedTable;

/// Why a request was not acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The buffer is full or the commit is slow: retry after this many seconds.
    Busy(u64),
    /// The commit failed; nothing of the request is durable, the client should retry.
    Failed(String),
}

#[derive(Default)]
struct State {
    /// Events of the open generation.
    pending: Vec<EventRow>,
    /// The open generation's number; generations below it are committed or committing.
    open: u64,
    /// messageId → generation that accepted it.
    seen: HashMap<String, u64>,
    /// (accepted at, id), oldest first: when ids leave the dedup window.
    expiry: VecDeque<(Instant, String)>,
    /// Recent generations whose commit failed.
    failed: BTreeSet<u64>,
}

pub struct Ingest {
    state: Mutex<State>,
    wake: Notify,
    /// The highest generation whose commit has finished (well or not).
    finished: watch::Sender<u64>,
    capacity: usize,
    window: Duration,
    ack_timeout: Duration,
    pub metrics: Metrics,
}

impl Ingest {
    /// `recent_ids` are the ids already in the table within the window (see
    /// `collect::recent_message_ids`): duplicates are caught across restarts too.
    pub fn new(
        capacity: usize,
        window: Duration,
        ack_timeout: Duration,
        recent_ids: Vec<String>,
    ) -> Arc<Ingest> {
        let now = Instant::now();
        let mut state = State {
            open: 1,
            ..State::default()
        };
        for id in recent_ids {
            state.expiry.push_back((now, id.clone()));
            state.seen.insert(id, 0);
        }
        Arc::new(Ingest {
            state: Mutex::new(state),
            wake: Notify::new(),
            finished: watch::Sender::new(0),
            capacity,
            window,
            ack_timeout,
            metrics: Metrics::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one
        // insert or push), so carrying on is safe.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds `rows` to the open generation and waits until they (and any earlier copy of a
    /// duplicate) are durable.
    pub async fn submit(&self, rows: Vec<EventRow>) -> Result<(), Refused> {
        Metrics::count(&self.metrics.received, rows.len());
        // The generations this request's events are (or were already) committed in.
        let mut depends = BTreeSet::new();
        let needed = {
            let mut state = self.lock();
            let now = Instant::now();
            while let Some((at, _)) = state.expiry.front() {
                if now.duration_since(*at) < self.window {
                    break;
                }
                if let Some((_, id)) = state.expiry.pop_front() {
                    state.seen.remove(&id);
                }
            }
            let fresh = rows
                .iter()
                .filter(|r| !state.seen.contains_key(&r.message_id))
                .count();
            if state.pending.len() + fresh > self.capacity {
                Metrics::count(&self.metrics.overloaded, 1);
                return Err(Refused::Busy(1));
            }
            let open = state.open;
            let mut duplicates = 0;
            for row in rows {
                if let Some(generation) = state.seen.get(&row.message_id) {
                    depends.insert(*generation);
                    duplicates += 1;
                    continue;
                }
                state.seen.insert(row.message_id.clone(), open);
                state.expiry.push_back((now, row.message_id.clone()));
                state.pending.push(row);
                depends.insert(open);
            }
            Metrics::count(&self.metrics.deduplicated, duplicates);
            self.metrics.buffered.store(
                state.pending.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            depends.last().copied().unwrap_or(0)
        };
        if needed == 0 {
            return Ok(());
        }
        self.wake.notify_one();
        let mut finished = self.finished.subscribe();
        let waited =
            tokio::time::timeout(self.ack_timeout, finished.wait_for(|done| *done >= needed)).await;
        match waited {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(Refused::Failed("the committer stopped".into())),
            Err(_) => {
                Metrics::count(&self.metrics.overloaded, 1);
                return Err(Refused::Busy(1));
            }
        }
        let state = self.lock();
        if depends.iter().any(|g| state.failed.contains(g)) {
            return Err(Refused::Failed("the commit failed".into()));
        }
        Ok(())
    }

    /// The committer: commits each generation in turn until `stop` is set and nothing is
    /// pending.
    pub async fn run(self: Arc<Self>, table: Arc<LandedTable>, mut stop: watch::Receiver<bool>) {
        loop {
            let (generation, rows) = {
                let mut state = self.lock();
                let rows = std::mem::take(&mut state.pending);
                let generation = state.open;
                if !rows.is_empty() {
                    state.open += 1;
                }
                (generation, rows)
            };
            if rows.is_empty() {
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            self.metrics
                .buffered
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            let committed = match events::to_batch(&rows) {
                Ok(batch) => table.append(&[batch]).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match committed {
                Ok(()) => {
                    self.metrics.observe_commit(started.elapsed());
                    Metrics::count(&self.metrics.committed, rows.len());
                }
                Err(e) => {
                    tracing::error!(error = %e, events = rows.len(), "event commit failed");
                    let mut state = self.lock();
                    // Forget the ids so that the clients' retries are accepted.
                    for row in &rows {
                        if state.seen.get(&row.message_id) == Some(&generation) {
                            state.seen.remove(&row.message_id);
                        }
                    }
                    state.failed.insert(generation);
                    while state.failed.len() > 1024 {
                        state.failed.pop_first();
                    }
                }
            }
            self.finished.send_replace(generation);
        }
    }
}
