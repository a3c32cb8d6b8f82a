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
//! a 200 always means durable, even for a duplicate. Ids are kept as 128-bit hashes, and at
//! most `max_ids` of them (the oldest go first), so memory stays flat under any load.
//!
//! The window (`dedup.rs`) is a fixed memory budget: under a sustained load it fills within
//! `max_ids / rate` seconds (18 s at 110,000 events/s with the default 2,000,000 ids), then
//! stays at that size.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::dedup::{DedupWindow, IdKey, IdKeyMap};
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

struct State {
    /// Events of the open generation.
    pending: Vec<EventRow>,
    /// The open generation's number; generations below it are committed or committing.
    open: u64,
    /// messageId hash → generation that accepted it, within the window.
    seen: DedupWindow,
    /// Recent generations whose commit failed.
    failed: BTreeSet<u64>,
}

pub struct Ingest {
    state: Mutex<State>,
    wake: Notify,
    /// The highest generation whose commit has finished (well or not).
    finished: watch::Sender<u64>,
    capacity: usize,
    ack_timeout: Duration,
    pub metrics: Metrics,
}

impl Ingest {
    /// `recent_ids` are the ids already in the table within the window (see
    /// `collect::recent_message_ids`): duplicates are caught across restarts too.
    pub fn new(
        capacity: usize,
        window: Duration,
        max_ids: usize,
        ack_timeout: Duration,
        recent_ids: Vec<String>,
    ) -> Arc<Ingest> {
        let now = Instant::now();
        let mut state = State {
            pending: Vec::new(),
            open: 1,
            seen: DedupWindow::new(max_ids, window),
            failed: BTreeSet::new(),
        };
        for id in recent_ids.into_iter().take(max_ids) {
            let key = id_key(&id);
            if state.seen.get(&key).is_none() {
                state.seen.insert(key, 0, now);
            }
        }
        let metrics = Metrics::default();
        Metrics::count(&metrics.dedup_ids, state.seen.len());
        Arc::new(Ingest {
            state: Mutex::new(state),
            wake: Notify::new(),
            finished: watch::Sender::new(0),
            capacity,
            ack_timeout,
            metrics,
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
            state.seen.expire(now);
            let known: Vec<(IdKey, Option<u64>)> = rows
                .iter()
                .map(|r| {
                    let key = id_key(&r.message_id);
                    (key, state.seen.get(&key))
                })
                .collect();
            let fresh = known.iter().filter(|(_, g)| g.is_none()).count();
            if state.pending.len() + fresh > self.capacity {
                Metrics::count(&self.metrics.overloaded, 1);
                return Err(Refused::Busy(1));
            }
            let open = state.open;
            let mut duplicates = 0;
            let mut in_request = IdKeyMap::with_capacity_and_hasher(rows.len(), Default::default());
            for (row, (key, known)) in rows.into_iter().zip(known) {
                // Known before, or a repeat within this request: wait for the first copy.
                let repeat = in_request.insert(key, ()).map(|()| open);
                if let Some(generation) = known.or(repeat) {
                    depends.insert(generation);
                    duplicates += 1;
                    continue;
                }
                state.seen.insert(key, open, now);
                state.pending.push(row);
                depends.insert(open);
            }
            Metrics::count(&self.metrics.deduplicated, duplicates);
            self.metrics.buffered.store(
                state.pending.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.metrics.dedup_ids.store(
                state.seen.len() as u64,
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
    ///
    /// Two generations overlap: while generation g's log entry is being published and
    /// fsync'd, g+1's data file is encoded and written. Log entries still go in generation
    /// order (each publishing task first waits for the previous one), so `finished` only
    /// moves forward, and at most one generation waits for its log entry at a time.
    pub async fn run(self: Arc<Self>, table: Arc<LandedTable>, mut stop: watch::Receiver<bool>) {
        let mut publishing: Option<(u64, tokio::task::JoinHandle<()>)> = None;
        let mut finished = self.finished.subscribe();
        loop {
            // Keep at most one generation waiting for its log entry: until the one before
            // the last is done, new events wait in the (bounded) buffer.
            if let Some((last, _)) = &publishing {
                let before_last = last.saturating_sub(1);
                let _ = finished.wait_for(|done| *done >= before_last).await;
            }
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
                    if let Some((_, task)) = publishing.take() {
                        let _ = task.await;
                    }
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
            let file = match events::to_batch(&rows) {
                Ok(batch) => table.write_file(&[batch]).await,
                Err(e) => Err(e),
            };
            let previous = publishing.take();
            let (ingest, table) = (Arc::clone(&self), Arc::clone(&table));
            let task = tokio::spawn(async move {
                if let Some((previous_generation, previous)) = previous {
                    // Its outcome is recorded by its own task; only the order matters here,
                    // unless the task died before recording anything.
                    if previous.await.is_err() {
                        ingest.fail(previous_generation);
                    }
                }
                let committed = match file {
                    Ok(add) => table
                        .commit("WRITE", vec![add], Vec::new())
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                ingest.finish(generation, &rows, committed, started);
            });
            publishing = Some((generation, task));
        }
    }

    /// Records the outcome of `generation` and wakes the requests waiting for it.
    fn finish(
        &self,
        generation: u64,
        rows: &[EventRow],
        committed: crate::Result<()>,
        started: Instant,
    ) {
        match committed {
            Ok(()) => {
                self.metrics.observe_commit(started.elapsed());
                Metrics::count(&self.metrics.committed, rows.len());
                self.metrics
                    .failing
                    .store(0, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, events = rows.len(), "event commit failed");
                self.fail(generation);
            }
        }
        self.finished.send_replace(generation);
    }

    /// Marks `generation` failed, and forgets its ids so that the clients' retries are
    /// accepted. A scan of every id, but failures are rare.
    fn fail(&self, generation: u64) {
        self.metrics
            .failing
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        state.seen.forget_generation(generation);
        state.failed.insert(generation);
        while state.failed.len() > 1024 {
            state.failed.pop_first();
        }
    }
}

/// A 128-bit hash of a message id: two SipHashes with different prefixes. Collisions (which
/// would drop an event as a duplicate) are out of reach at any realistic id count, and the
/// key costs 16 bytes however long the id.
fn id_key(id: &str) -> IdKey {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        salt.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    };
    (half(1), half(2))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::Storage;

    fn row(id: &str) -> EventRow {
        EventRow {
            message_id: id.to_string(),
            kind: "track",
            anonymous_id: Some("a".into()),
            user_id: None,
            event: Some("e".into()),
            properties: "{}".into(),
            traits: None,
            context: "{}".into(),
            timestamp: 0,
            name: None,
            group_id: None,
            previous_id: None,
            original_timestamp: None,
            sent_at: None,
            received_at: 0,
        }
    }

    async fn table() -> (tempfile::TempDir, Arc<LandedTable>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let table = LandedTable::create(&storage, "events", events::schema())
            .await
            .unwrap();
        (dir, Arc::new(table))
    }

    #[tokio::test]
    async fn a_full_buffer_refuses_at_once_without_remembering_the_ids() {
        let ingest = Ingest::new(
            2,
            Duration::from_secs(60),
            100,
            Duration::from_secs(5),
            vec![],
        );
        // No committer runs: nothing drains the buffer.
        let refused = ingest.submit(vec![row("a"), row("b"), row("c")]).await;
        assert_eq!(refused, Err(Refused::Busy(1)));
        assert!(ingest.lock().seen.is_empty());
    }

    #[tokio::test]
    async fn dedup_memory_is_bounded_by_max_ids_oldest_first() {
        let (_dir, table) = table().await;
        let ingest = Ingest::new(
            100,
            Duration::from_secs(3600),
            3,
            Duration::from_secs(5),
            vec![],
        );
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(Arc::clone(&ingest).run(Arc::clone(&table), stop));
        for id in ["m1", "m2", "m3", "m4", "m5"] {
            ingest.submit(vec![row(id)]).await.unwrap();
        }
        assert!(ingest.lock().seen.len() <= 3);
        // m5 is remembered; m1 was forgotten to make room, so it is stored again.
        ingest.submit(vec![row("m5"), row("m1")]).await.unwrap();
        assert_eq!(
            ingest
                .metrics
                .deduplicated
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(table.snapshot().row_count(), Some(6));
    }

    #[tokio::test]
    async fn ids_leave_the_window_once_it_has_passed() {
        let (_dir, table) = table().await;
        let ingest = Ingest::new(
            100,
            Duration::from_millis(300),
            100,
            Duration::from_secs(5),
            vec![],
        );
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(Arc::clone(&ingest).run(Arc::clone(&table), stop));
        ingest.submit(vec![row("w1")]).await.unwrap();
        ingest.submit(vec![row("w1"), row("w2")]).await.unwrap();
        let deduplicated = || {
            ingest
                .metrics
                .deduplicated
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(deduplicated(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Both ids are older than the window now: stored again, and forgotten.
        ingest.submit(vec![row("w1")]).await.unwrap();
        assert_eq!(deduplicated(), 1);
        assert_eq!(table.snapshot().row_count(), Some(3));
        assert_eq!(ingest.lock().seen.len(), 1);
    }

    /// However many ids go through, the window holds at most `max_ids` (its memory is a
    /// fixed budget, see `dedup.rs`), and `/metrics` says how many.
    #[tokio::test]
    async fn the_dedup_window_stays_within_its_budget_and_reports_its_size() {
        let (_dir, table) = table().await;
        let ingest = Ingest::new(
            10_000,
            Duration::from_secs(3600),
            1000,
            Duration::from_secs(5),
            vec![],
        );
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(Arc::clone(&ingest).run(Arc::clone(&table), stop));
        for request in 0..30 {
            let rows = (0..100).map(|i| row(&format!("f{request}-{i}"))).collect();
            ingest.submit(rows).await.unwrap();
        }
        let held = ingest.lock().seen.len();
        assert!((500..=1000).contains(&held), "{held} ids held");
        assert_eq!(
            ingest
                .metrics
                .dedup_ids
                .load(std::sync::atomic::Ordering::Relaxed),
            held as u64
        );
        assert_eq!(table.snapshot().row_count(), Some(3000));
    }

    #[tokio::test]
    async fn ids_loaded_at_start_up_are_duplicates_without_waiting() {
        let ingest = Ingest::new(
            10,
            Duration::from_secs(60),
            100,
            Duration::from_millis(50),
            vec!["old".into()],
        );
        // No committer: a fresh id would time out, a known one answers at once.
        ingest.submit(vec![row("old")]).await.unwrap();
        assert_eq!(ingest.submit(vec![row("new")]).await, Err(Refused::Busy(1)));
    }
}
