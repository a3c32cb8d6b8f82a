//! The outbound action queue: every message a trigger decided to send (or not, and why),
//! durable in an embedded ACID store (redb) on local disk.
//!
//! A trigger run is one write transaction: the policy reads the profile's recent messages,
//! the actions are inserted, and the trigger's checkpoint (which rows were true, and when
//! each fired) is updated, all committed together. So a run killed at any point leaves either
//! everything or nothing, and a repeated run finds its rows already fired: no action is lost
//! or queued twice. Delivery claims pending actions (status `delivering`, invisible for a
//! visibility timeout), then acknowledges (`delivered`) or fails them (back to `pending`
//! with a backoff, or `dead` after the last attempt); claimed work that is never
//! acknowledged becomes visible again.
//!
//! Rows a run suppresses or holds out never change afterwards, so each run stores them as
//! one block rather than one record per row: a run over a million candidates writes a few
//! large values, not a million small ones. Claims are committed without fsync: a claim lost
//! in a crash only means the action is handed out again, with the same idempotency key.

pub mod delivery;
pub mod policy;
pub mod record;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{C360Error, Result};
use policy::{Candidate, Decision, Policy};
use record::{SkippedBlock, decode_action, encode_action, idempotency_key, row_hash};
use stats::QueueStats;

const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("actions_v2");
/// Actions pending or in delivery, by channel and by when they are next due:
/// `(channel, available_at µs, action_id)`.
const READY: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("ready_v2");
/// Each trigger's checkpoint (see `record::encode_checkpoint`).
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// Rows runs suppressed or held out, one block per run, keyed by the block's first id.
const SKIPPED: TableDefinition<u64, &[u8]> = TableDefinition::new("skipped");
/// Messages counted by caps: `profile \x1f channel` → JSON list of `(at µs, trigger)`.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent");
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("trigger_runs");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const SEPARATOR: char = '\u{1f}';

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Delivering,
    Delivered,
    Failed,
    Dead,
    Suppressed,
    HeldOut,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivering => "delivering",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Suppressed => "suppressed",
            Status::HeldOut => "held_out",
        }
    }

    /// Whether the action is done with: retention may remove it.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Delivering | Status::Failed)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub action_id: u64,
    pub trigger: String,
    pub profile_id: String,
    pub channel: String,
    /// The trigger row's columns, as a JSON object; `None` for rows not sent (suppressed
    /// or held out), which keep who, which trigger, when and why, but not the message.
    pub payload: Option<String>,
    /// Trigger, row key and firing time: the same for every delivery attempt of one action.
    pub idempotency_key: String,
    pub status: Status,
    pub reason: Option<String>,
    pub created_at: i64,
    pub available_at: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// One trigger run, for `trigger_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRun {
    pub trigger: String,
    pub run_id: u64,
    pub started_at: i64,
    pub duration_ms: u64,
    pub candidates: u64,
    pub enqueued: u64,
    pub held_out: u64,
    /// Suppressed rows by reason.
    pub suppressed: HashMap<String, u64>,
    pub error: Option<String>,
}

/// What one run decided, row by row (for `EXPLAIN TRIGGER`) and in total.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    pub candidates: u64,
    /// Rows true now that fired before and may not fire again yet.
    pub already_fired: u64,
    pub decisions: Vec<(Candidate, Decision)>,
}

impl RunOutcome {
    pub fn count(&self, wanted: fn(&Decision) -> bool) -> u64 {
        self.decisions.iter().filter(|(_, d)| wanted(d)).count() as u64
    }
}

/// Renders the JSON payloads of a run's rows (by `Candidate::row`), once the run knows
/// which rows it sends: most rows of a large run are never rendered.
pub trait Payloads {
    fn render(&self, rows: &[usize]) -> Result<Vec<String>>;
}

/// Payloads already rendered, one per row.
impl Payloads for Vec<String> {
    fn render(&self, rows: &[usize]) -> Result<Vec<String>> {
        Ok(rows
            .iter()
            .map(|&row| self.get(row).cloned().unwrap_or_else(|| "{}".to_string()))
            .collect())
    }
}

pub struct Queue {
    /// Every operation holds the read side for its whole transaction; [`Queue::forget_profile`]
    /// takes the write side to swap in a rewritten file.
    db: RwLock<Arc<Database>>,
    /// The queue file (`None` in memory).
    path: Option<PathBuf>,
    pub stats: QueueStats,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

/// Copies every entry of one table from the old queue file to the new one.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<()> {
    let source = from.open_table(definition).map_err(store_error)?;
    let mut target = to.open_table(definition).map_err(store_error)?;
    for entry in source.iter().map_err(store_error)? {
        let (key, value) = entry.map_err(store_error)?;
        target
            .insert(key.value(), value.value())
            .map_err(store_error)?;
    }
    Ok(())
}

fn store_error(e: impl std::fmt::Display) -> C360Error {
    C360Error::Queue(e.to_string())
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(store_error)
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| C360Error::Corrupt(format!("action queue record: {e}")))
}

impl Queue {
    /// Opens (or creates) the queue file.
    pub fn open(path: &Path) -> Result<Queue> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| C360Error::io(parent, e))?;
        }
        let db = Database::create(path).map_err(|e| {
            C360Error::Queue(format!(
                "cannot open the action queue {}: {e}",
                path.display()
            ))
        })?;
        let mut queue = Queue::with_tables(db)?;
        queue.path = Some(path.to_path_buf());
        Ok(queue)
    }

    /// A queue that lives as long as the process (for `memory://` storage roots).
    pub fn in_memory() -> Result<Queue> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(store_error)?;
        Queue::with_tables(db)
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Arc<Database>> {
        // A panic in another operation poisons the lock but leaves the store consistent:
        // redb rolls back a transaction that was not committed.
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites the queue file with only its live entries and swaps it in: deleted entries
    /// otherwise stay in the file's free pages, readable with `strings`, until reused.
    fn rewrite(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut current = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh_path = path.with_extension("redb.rewrite");
        // A rewrite killed half-way leaves this file; it is never read, only replaced.
        let _ = std::fs::remove_file(&fresh_path);
        let fresh = Database::create(&fresh_path).map_err(store_error)?;
        {
            let from = current.begin_read().map_err(store_error)?;
            let to = fresh.begin_write().map_err(store_error)?;
            copy_table(&from, &to, ACTIONS)?;
            copy_table(&from, &to, READY)?;
            copy_table(&from, &to, CHECKPOINTS)?;
            copy_table(&from, &to, SKIPPED)?;
            copy_table(&from, &to, SENT)?;
            copy_table(&from, &to, RUNS)?;
            copy_table(&from, &to, COUNTERS)?;
            to.commit().map_err(store_error)?;
        }
        // The rename is the commit point: before it the old file is whole, after it the new.
        std::fs::rename(&fresh_path, path).map_err(|e| C360Error::io(path, e))?;
        if let Some(parent) = path.parent()
            && let Ok(dir) = std::fs::File::open(parent)
        {
            let _ = dir.sync_all();
        }
        *current = Arc::new(fresh);
        Ok(())
    }

    fn with_tables(db: Database) -> Result<Queue> {
        let txn = db.begin_write().map_err(store_error)?;
        {
            txn.open_table(ACTIONS).map_err(store_error)?;
            txn.open_table(READY).map_err(store_error)?;
            txn.open_table(CHECKPOINTS).map_err(store_error)?;
            txn.open_table(SKIPPED).map_err(store_error)?;
            txn.open_table(SENT).map_err(store_error)?;
            txn.open_table(RUNS).map_err(store_error)?;
            txn.open_table(COUNTERS).map_err(store_error)?;
        }
        txn.commit().map_err(store_error)?;
        Ok(Queue {
            db: RwLock::new(Arc::new(db)),
            path: None,
            stats: QueueStats::default(),
        })
    }

    /// Decides and (unless `dry_run`) enqueues one trigger run, with its checkpoint, in one
    /// transaction. `rows` are the trigger query's current rows; a row fires when its key was
    /// not true at the last run, or fired longer than `refire_after` ago.
    pub fn run_trigger(
        &self,
        trigger: &str,
        policy: &Policy,
        rows: Vec<Candidate>,
        payloads: &dyn Payloads,
        now: i64,
        dry_run: bool,
    ) -> Result<RunOutcome> {
        let started = std::time::Instant::now();
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut outcome = RunOutcome {
            candidates: rows.len() as u64,
            ..RunOutcome::default()
        };
        let decided;
        {
            let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(store_error)?;
            let mut sent = txn.open_table(SENT).map_err(store_error)?;
            let previous = match checkpoints.get(trigger).map_err(store_error)? {
                Some(bytes) => record::decode_checkpoint(bytes.value())?,
                None => Vec::new(),
            };
            // Rows in hash order, walked beside the checkpoint (also in hash order): each
            // row learns when it last fired, and repeats of a key are found, in one pass.
            let hashes: Vec<u128> = rows.iter().map(|c| row_hash(&c.key)).collect();
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_unstable_by_key(|&i| (hashes[i], i));
            let mut fired_at: Vec<Option<i64>> = vec![None; rows.len()];
            let mut repeated = vec![false; rows.len()];
            let mut at_previous = 0;
            for (position, &i) in order.iter().enumerate() {
                if position > 0 && hashes[order[position - 1]] == hashes[i] {
                    // The first row of a key, in query order, is the one that counts.
                    repeated[i] = true;
                    continue;
                }
                while previous
                    .get(at_previous)
                    .is_some_and(|&(hash, _)| hash < hashes[i])
                {
                    at_previous += 1;
                }
                if let Some(&(hash, at)) = previous.get(at_previous)
                    && hash == hashes[i]
                {
                    fired_at[i] = Some(at);
                }
            }

            // When each row still true fired: before, or now.
            let mut stamp = vec![now; rows.len()];
            for (i, candidate) in rows.into_iter().enumerate() {
                if repeated[i] {
                    outcome.candidates -= 1;
                    continue;
                }
                if let Some(at) = fired_at[i]
                    && !policy.refire_after.is_some_and(|after| now - at >= after)
                {
                    outcome.already_fired += 1;
                    stamp[i] = at;
                    continue;
                }
                let decision = match policy.screen(trigger, &candidate) {
                    Some(decision) => decision,
                    None if !policy.has_caps() => {
                        policy.decide_sendable(trigger, &candidate, now, &[])
                    }
                    None => {
                        // The history is read and written row by row, so that two rows of
                        // one profile in this run count against the same caps.
                        let counter_key =
                            format!("{}{SEPARATOR}{}", candidate.profile_id, policy.channel);
                        let mut history: Vec<(i64, String)> =
                            match sent.get(counter_key.as_str()).map_err(store_error)? {
                                Some(bytes) => parse(bytes.value())?,
                                None => Vec::new(),
                            };
                        let decision = policy.decide_sendable(trigger, &candidate, now, &history);
                        if matches!(decision, Decision::Send { .. }) {
                            history.retain(|(at, _)| now - at <= policy::HISTORY_WINDOW_MICROS);
                            history.push((now, trigger.to_string()));
                            sent.insert(counter_key.as_str(), json(&history)?.as_slice())
                                .map_err(store_error)?;
                        }
                        decision
                    }
                };
                outcome.decisions.push((candidate, decision));
            }
            // Rows no longer true drop out, and may fire again when they next are.
            let checkpoint: Vec<(u128, i64)> = order
                .iter()
                .filter(|&&i| !repeated[i])
                .map(|&i| (hashes[i], stamp[i]))
                .collect();
            decided = started.elapsed();
            if !dry_run {
                if checkpoint != previous {
                    checkpoints
                        .insert(trigger, record::encode_checkpoint(&checkpoint).as_slice())
                        .map_err(store_error)?;
                }
                drop(checkpoints);
                drop(sent);
                self.enqueue(&txn, trigger, policy, &outcome.decisions, payloads, now)?;
            }
        }
        let written = started.elapsed();
        if dry_run {
            txn.abort().map_err(store_error)?;
        } else {
            txn.commit().map_err(store_error)?;
            self.stats
                .count_decisions(outcome.decisions.iter().map(|(_, d)| d));
        }
        tracing::debug!(
            trigger,
            rows = outcome.candidates,
            decided_ms = decided.as_millis() as u64,
            written_ms = (written - decided).as_millis() as u64,
            committed_ms = (started.elapsed() - written).as_millis() as u64,
            "trigger run in the queue"
        );
        Ok(outcome)
    }

    /// Writes a run's decisions: one block for the rows not sent, one action per row sent.
    fn enqueue(
        &self,
        txn: &redb::WriteTransaction,
        trigger: &str,
        policy: &Policy,
        decisions: &[(Candidate, Decision)],
        payloads: &dyn Payloads,
        now: i64,
    ) -> Result<()> {
        let mut counters = txn.open_table(COUNTERS).map_err(store_error)?;
        let mut next_id = counters
            .get("next_action_id")
            .map_err(store_error)?
            .map_or(1, |v| v.value());
        let sends: Vec<(&Candidate, i64)> = decisions
            .iter()
            .filter_map(|(candidate, decision)| match decision {
                Decision::Send { available_at } => Some((candidate, *available_at)),
                _ => None,
            })
            .collect();
        let rows: Vec<usize> = sends.iter().map(|(candidate, _)| candidate.row).collect();
        let rendered = payloads.render(&rows)?;
        let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
        let mut ready = txn.open_table(READY).map_err(store_error)?;
        for ((candidate, available_at), payload) in sends.into_iter().zip(rendered) {
            let action = Action {
                action_id: next_id,
                trigger: trigger.to_string(),
                profile_id: candidate.profile_id.clone(),
                channel: policy.channel.clone(),
                payload: Some(payload),
                idempotency_key: idempotency_key(trigger, &candidate.key, now),
                status: Status::Pending,
                reason: None,
                created_at: now,
                available_at,
                attempts: 0,
                last_error: None,
                delivered_at: None,
            };
            actions
                .insert(next_id, encode_action(&action).as_slice())
                .map_err(store_error)?;
            ready
                .insert((policy.channel.as_str(), available_at, next_id), ())
                .map_err(store_error)?;
            next_id += 1;
        }
        let skipped: Vec<(&Candidate, Status, &'static str)> = decisions
            .iter()
            .filter_map(|(candidate, decision)| match decision {
                Decision::Send { .. } => None,
                Decision::Suppress(reason) => {
                    Some((candidate, Status::Suppressed, reason.as_str()))
                }
                Decision::HoldOut => Some((candidate, Status::HeldOut, "holdout")),
            })
            .collect();
        // Sent rows are numbered first, in query order; the rest follow as one block.
        if !skipped.is_empty() {
            let block = SkippedBlock::encode_rows(
                trigger,
                &policy.channel,
                now,
                skipped.len(),
                skipped.iter().map(|(candidate, status, reason)| {
                    (
                        candidate.profile_id.as_str(),
                        candidate.key.as_str(),
                        *status,
                        *reason,
                    )
                }),
            );
            txn.open_table(SKIPPED)
                .map_err(store_error)?
                .insert(next_id, block.as_slice())
                .map_err(store_error)?;
            next_id += skipped.len() as u64;
        }
        counters
            .insert("next_action_id", next_id)
            .map_err(store_error)?;
        Ok(())
    }

    /// Records a run's statistics.
    pub fn record_run(&self, mut run: TriggerRun) -> Result<TriggerRun> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        {
            let mut counters = txn.open_table(COUNTERS).map_err(store_error)?;
            let id = counters
                .get("next_run_id")
                .map_err(store_error)?
                .map_or(1, |v| v.value());
            counters
                .insert("next_run_id", id + 1)
                .map_err(store_error)?;
            run.run_id = id;
            let mut runs = txn.open_table(RUNS).map_err(store_error)?;
            runs.insert(id, json(&run)?.as_slice())
                .map_err(store_error)?;
        }
        txn.commit().map_err(store_error)?;
        Ok(run)
    }

    /// Hands out up to `limit` pending actions of `channel` that are due at `now`, each to
    /// this caller only: they turn `delivering` and come back after `visibility` µs unless
    /// acknowledged or failed first.
    pub fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: i64,
        visibility: i64,
    ) -> Result<Vec<Action>> {
        let db = self.db();
        let mut txn = db.begin_write().map_err(store_error)?;
        // A claim lost in a crash hands the action out again: at least once, same key.
        txn.set_durability(Durability::None).map_err(store_error)?;
        let mut claimed = Vec::new();
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            let mut due = Vec::with_capacity(limit.min(4096));
            for entry in ready
                .range((channel, i64::MIN, 0)..=(channel, now, u64::MAX))
                .map_err(store_error)?
                .take(limit)
            {
                let (key, _) = entry.map_err(store_error)?;
                let (_, at, id) = key.value();
                due.push((at, id));
            }
            for (at, id) in due {
                ready.remove((channel, at, id)).map_err(store_error)?;
                let Some(bytes) = actions.get(id).map_err(store_error)? else {
                    continue;
                };
                let mut action = decode_action(id, bytes.value())?;
                drop(bytes);
                action.status = Status::Delivering;
                action.attempts += 1;
                action.available_at = now + visibility;
                ready
                    .insert((channel, action.available_at, id), ())
                    .map_err(store_error)?;
                actions
                    .insert(id, encode_action(&action).as_slice())
                    .map_err(store_error)?;
                claimed.push(action);
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(claimed)
    }

    /// Marks claimed actions delivered; returns how many were (others were not claimed).
    pub fn ack(&self, ids: &[u64], now: i64) -> Result<usize> {
        let mut waits = Vec::new();
        let acked = self.update(ids, |action| {
            if action.status != Status::Delivering {
                return None;
            }
            waits.push(std::time::Duration::from_micros(
                (now - action.created_at).max(0) as u64,
            ));
            action.status = Status::Delivered;
            action.delivered_at = Some(now);
            Some(None)
        })?;
        self.stats.delivered(waits.into_iter());
        Ok(acked)
    }

    /// Returns claimed actions to `pending` at their retry time, or marks them `dead`
    /// (`None`), with the error that failed them.
    pub fn fail(&self, failures: &[(u64, String, Option<i64>)]) -> Result<usize> {
        let plans: HashMap<u64, (&str, Option<i64>)> = failures
            .iter()
            .map(|(id, error, retry_at)| (*id, (error.as_str(), *retry_at)))
            .collect();
        let ids: Vec<u64> = failures.iter().map(|(id, _, _)| *id).collect();
        let (mut retried, mut dead) = (0, 0);
        let changed = self.update(&ids, |action| {
            let (error, retry_at) = plans.get(&action.action_id)?;
            if action.status != Status::Delivering {
                return None;
            }
            action.last_error = Some(error.to_string());
            match retry_at {
                Some(at) => {
                    retried += 1;
                    action.status = Status::Pending;
                    action.available_at = *at;
                    Some(Some(*at))
                }
                None => {
                    dead += 1;
                    action.status = Status::Dead;
                    Some(None)
                }
            }
        })?;
        self.stats.failed(retried, dead);
        Ok(changed)
    }

    /// Applies `change` to each action: `None` leaves it as it is, `Some(next)` stores it,
    /// due again at `next` or out of the ready index.
    fn update(
        &self,
        ids: &[u64],
        mut change: impl FnMut(&mut Action) -> Option<Option<i64>>,
    ) -> Result<usize> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut changed = 0;
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            for &id in ids {
                let Some(bytes) = actions.get(id).map_err(store_error)? else {
                    continue;
                };
                let mut action = decode_action(id, bytes.value())?;
                drop(bytes);
                let was_due = action.available_at;
                if let Some(next) = change(&mut action) {
                    ready
                        .remove((action.channel.as_str(), was_due, id))
                        .map_err(store_error)?;
                    if let Some(at) = next {
                        ready
                            .insert((action.channel.as_str(), at, id), ())
                            .map_err(store_error)?;
                    }
                    actions
                        .insert(id, encode_action(&action).as_slice())
                        .map_err(store_error)?;
                    changed += 1;
                }
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(changed)
    }

    /// Every action, oldest first (for the `actions` table): those sent or to be sent, and
    /// the rows runs suppressed or held out.
    pub fn actions(&self) -> Result<Vec<Action>> {
        let db = self.db();
        let txn = db.begin_read().map_err(store_error)?;
        let mut all = Vec::new();
        let table = txn.open_table(ACTIONS).map_err(store_error)?;
        for entry in table.iter().map_err(store_error)? {
            let (id, bytes) = entry.map_err(store_error)?;
            all.push(decode_action(id.value(), bytes.value())?);
        }
        let blocks = txn.open_table(SKIPPED).map_err(store_error)?;
        for entry in blocks.iter().map_err(store_error)? {
            let (first_id, bytes) = entry.map_err(store_error)?;
            all.extend(SkippedBlock::decode(bytes.value())?.actions(first_id.value()));
        }
        all.sort_unstable_by_key(|a| a.action_id);
        Ok(all)
    }

    /// Every trigger run, oldest first (for `trigger_runs`).
    pub fn runs(&self) -> Result<Vec<TriggerRun>> {
        let db = self.db();
        let txn = db.begin_read().map_err(store_error)?;
        let table = txn.open_table(RUNS).map_err(store_error)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (_, bytes) = entry.map_err(store_error)?;
            all.push(parse(bytes.value())?);
        }
        Ok(all)
    }

    /// Actions pending or in delivery, per channel.
    pub fn depth(&self) -> Result<Vec<(String, u64)>> {
        let db = self.db();
        let txn = db.begin_read().map_err(store_error)?;
        let ready = txn.open_table(READY).map_err(store_error)?;
        let mut depth: Vec<(String, u64)> = Vec::new();
        for entry in ready.iter().map_err(store_error)? {
            let (key, _) = entry.map_err(store_error)?;
            let (channel, _, _) = key.value();
            match depth.last_mut() {
                Some((last, count)) if last == channel => *count += 1,
                _ => depth.push((channel.to_string(), 1)),
            }
        }
        Ok(depth)
    }

    /// Removes what retention no longer keeps: finished actions, blocks of rows not sent
    /// and trigger runs from before `before` (µs), and message history too old for any cap.
    /// Pending and in-delivery actions are kept however old. Returns the actions removed.
    pub fn expire(&self, before: i64, now: i64) -> Result<u64> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut removed = 0;
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut expired = Vec::new();
            for entry in actions.iter().map_err(store_error)? {
                let (id, bytes) = entry.map_err(store_error)?;
                let action = decode_action(id.value(), bytes.value())?;
                if action.status.is_final() && action.created_at < before {
                    expired.push(id.value());
                }
            }
            for id in &expired {
                actions.remove(*id).map_err(store_error)?;
            }
            removed += expired.len() as u64;

            let mut blocks = txn.open_table(SKIPPED).map_err(store_error)?;
            let mut expired = Vec::new();
            for entry in blocks.iter().map_err(store_error)? {
                let (first_id, bytes) = entry.map_err(store_error)?;
                let block = SkippedBlock::decode(bytes.value())?;
                if block.created_at < before {
                    expired.push((first_id.value(), block.rows.len() as u64));
                }
            }
            for (first_id, rows) in expired {
                blocks.remove(first_id).map_err(store_error)?;
                removed += rows;
            }

            let mut runs = txn.open_table(RUNS).map_err(store_error)?;
            let mut expired = Vec::new();
            for entry in runs.iter().map_err(store_error)? {
                let (id, bytes) = entry.map_err(store_error)?;
                let run: TriggerRun = parse(bytes.value())?;
                if run.started_at < before {
                    expired.push(id.value());
                }
            }
            for id in expired {
                runs.remove(id).map_err(store_error)?;
            }

            let mut sent = txn.open_table(SENT).map_err(store_error)?;
            let mut stale = Vec::new();
            for entry in sent.iter().map_err(store_error)? {
                let (key, bytes) = entry.map_err(store_error)?;
                let history: Vec<(i64, String)> = parse(bytes.value())?;
                if history
                    .iter()
                    .all(|(at, _)| now - at > policy::HISTORY_WINDOW_MICROS)
                {
                    stale.push(key.value().to_string());
                }
            }
            for key in stale {
                sent.remove(key.as_str()).map_err(store_error)?;
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(removed)
    }

    /// Erases a person from the queue (`FORGET PROFILE`): their actions whatever their
    /// status (rows not sent too), their place among the ready ones, their checkpoint
    /// entries and the sent history that caps count; then rewrites the file, so that no
    /// free page still holds them. Trigger runs hold only counts and stay. Checkpoint
    /// entries of rows keyed by a `dedup_key` stay as anonymous 128-bit hashes until the
    /// row stops being true. Gives the number of actions deleted.
    pub fn forget_profile(&self, profile_id: &str) -> Result<usize> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut deleted = 0;
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            let mut theirs = Vec::new();
            for entry in actions.iter().map_err(store_error)? {
                let (id, bytes) = entry.map_err(store_error)?;
                let action = decode_action(id.value(), bytes.value())?;
                if action.profile_id == profile_id {
                    theirs.push(action);
                }
            }
            for action in theirs {
                actions.remove(action.action_id).map_err(store_error)?;
                ready
                    .remove((
                        action.channel.as_str(),
                        action.available_at,
                        action.action_id,
                    ))
                    .map_err(store_error)?;
                deleted += 1;
            }

            // A block's ids are contiguous: one that loses rows is split around them.
            let mut blocks = txn.open_table(SKIPPED).map_err(store_error)?;
            let mut rewritten = Vec::new();
            for entry in blocks.iter().map_err(store_error)? {
                let (first_id, bytes) = entry.map_err(store_error)?;
                let block = SkippedBlock::decode(bytes.value())?;
                if block.rows.iter().any(|row| row.profile_id == profile_id) {
                    rewritten.push((first_id.value(), block));
                }
            }
            for (first_id, block) in rewritten {
                blocks.remove(first_id).map_err(store_error)?;
                let mut part = SkippedBlock {
                    rows: Vec::new(),
                    ..block.clone()
                };
                let mut part_first = first_id;
                for (i, row) in block.rows.into_iter().enumerate() {
                    let id = first_id + i as u64;
                    if row.profile_id == profile_id {
                        deleted += 1;
                        if !part.rows.is_empty() {
                            blocks
                                .insert(part_first, part.encode().as_slice())
                                .map_err(store_error)?;
                            part.rows.clear();
                        }
                        part_first = id + 1;
                    } else {
                        part.rows.push(row);
                    }
                }
                if !part.rows.is_empty() {
                    blocks
                        .insert(part_first, part.encode().as_slice())
                        .map_err(store_error)?;
                }
            }

            let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(store_error)?;
            let hash = row_hash(profile_id);
            let mut changed = Vec::new();
            for entry in checkpoints.iter().map_err(store_error)? {
                let (trigger, bytes) = entry.map_err(store_error)?;
                let mut entries = record::decode_checkpoint(bytes.value())?;
                if let Ok(at) = entries.binary_search_by_key(&hash, |&(h, _)| h) {
                    entries.remove(at);
                    changed.push((trigger.value().to_string(), entries));
                }
            }
            for (trigger, entries) in changed {
                checkpoints
                    .insert(
                        trigger.as_str(),
                        record::encode_checkpoint(&entries).as_slice(),
                    )
                    .map_err(store_error)?;
            }

            let mut sent = txn.open_table(SENT).map_err(store_error)?;
            let prefix = format!("{profile_id}{SEPARATOR}");
            let mut keys = Vec::new();
            for entry in sent.range(prefix.as_str()..).map_err(store_error)? {
                let (key, _) = entry.map_err(store_error)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                keys.push(key.value().to_string());
            }
            for key in keys {
                sent.remove(key.as_str()).map_err(store_error)?;
            }
        }
        txn.commit().map_err(store_error)?;
        drop(db);
        self.rewrite()?;
        Ok(deleted)
    }

    /// Forgets a dropped trigger's checkpoint (its actions stay, as history).
    pub fn forget_trigger(&self, trigger: &str) -> Result<()> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        txn.open_table(CHECKPOINTS)
            .map_err(store_error)?
            .remove(trigger)
            .map_err(store_error)?;
        txn.commit().map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NOW: i64 = 1_780_000_000_000_000;
    const MINUTE: i64 = 60_000_000;

    fn policy(options: &[(&str, &str)]) -> Policy {
        let options: BTreeMap<String, String> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_options("email", &options, None, chrono_tz::Europe::Paris).unwrap()
    }

    fn rows(profiles: &[&str], consent: bool) -> (Vec<Candidate>, Vec<String>) {
        let candidates = profiles
            .iter()
            .enumerate()
            .map(|(row, p)| Candidate {
                profile_id: p.to_string(),
                key: p.to_string(),
                row,
                required: Vec::new(),
                consent: Some(consent),
                time_zone: None,
            })
            .collect();
        let payloads = profiles
            .iter()
            .map(|p| format!(r#"{{"p":"{p}"}}"#))
            .collect();
        (candidates, payloads)
    }

    fn run(queue: &Queue, policy: &Policy, profiles: &[&str], now: i64) -> RunOutcome {
        let (candidates, payloads) = rows(profiles, true);
        queue
            .run_trigger("t", policy, candidates, &payloads, now, false)
            .unwrap()
    }

    fn sent(outcome: &RunOutcome) -> u64 {
        outcome.count(|d| matches!(d, Decision::Send { .. }))
    }

    #[test]
    fn a_row_fires_once_while_true_and_again_after_it_was_false() {
        let queue = Queue::in_memory().unwrap();
        let policy = policy(&[]);
        assert_eq!(sent(&run(&queue, &policy, &["a", "b", "a"], NOW)), 2);
        let again = run(&queue, &policy, &["a", "b"], NOW + MINUTE);
        assert_eq!((sent(&again), again.already_fired), (0, 2));
        run(&queue, &policy, &["b"], NOW + 2 * MINUTE);
        assert_eq!(
            sent(&run(&queue, &policy, &["a", "b"], NOW + 3 * MINUTE)),
            1
        );
        let actions = queue.actions().unwrap();
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[0].payload.as_deref(), Some(r#"{"p":"a"}"#));
    }

    #[test]
    fn refire_after_lets_a_row_that_stays_true_fire_again() {
        let queue = Queue::in_memory().unwrap();
        let policy = policy(&[("refire_after", "1 hour")]);
        run(&queue, &policy, &["a"], NOW);
        assert_eq!(sent(&run(&queue, &policy, &["a"], NOW + 30 * MINUTE)), 0);
        assert_eq!(sent(&run(&queue, &policy, &["a"], NOW + 61 * MINUTE)), 1);
    }

    #[test]
    fn dry_runs_and_suppressed_rows() {
        let queue = Queue::in_memory().unwrap();
        let policy = policy(&[]);
        let (candidates, payloads) = rows(&["a"], false);
        let dry = queue
            .run_trigger("t", &policy, candidates, &payloads, NOW, true)
            .unwrap();
        assert_eq!(dry.decisions.len(), 1);
        assert!(
            queue.actions().unwrap().is_empty(),
            "a dry run writes nothing"
        );

        let (candidates, payloads) = rows(&["a", "b"], false);
        queue
            .run_trigger("t", &policy, candidates, &payloads, NOW, false)
            .unwrap();
        let actions = queue.actions().unwrap();
        assert_eq!(actions.len(), 2);
        assert!(actions.iter().all(|a| a.status == Status::Suppressed
            && a.reason.as_deref() == Some("no_consent")
            && a.payload.is_none()));
        assert_eq!(queue.claim("email", 10, NOW, MINUTE).unwrap().len(), 0);
    }

    #[test]
    fn claims_are_exclusive_until_their_visibility_runs_out() {
        let queue = Queue::in_memory().unwrap();
        run(&queue, &policy(&[]), &["a", "b", "c"], NOW);
        let first = queue.claim("email", 2, NOW, MINUTE).unwrap();
        let second = queue.claim("email", 10, NOW, MINUTE).unwrap();
        assert_eq!((first.len(), second.len()), (2, 1));
        assert!(queue.claim("sms", 10, NOW, MINUTE).unwrap().is_empty());
        assert!(
            queue
                .claim("email", 10, NOW + 1, MINUTE)
                .unwrap()
                .is_empty()
        );
        assert_eq!(queue.ack(&[first[0].action_id], NOW).unwrap(), 1);
        // The unacknowledged ones come back once invisible long enough.
        let back = queue.claim("email", 10, NOW + MINUTE, MINUTE).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back.iter().all(|a| a.attempts == 2));
    }

    #[test]
    fn failures_retry_then_die_and_retention_keeps_what_is_not_done() {
        let queue = Queue::in_memory().unwrap();
        run(&queue, &policy(&[]), &["a", "b"], NOW);
        let claimed = queue.claim("email", 10, NOW, MINUTE).unwrap();
        let failures = vec![
            (
                claimed[0].action_id,
                "HTTP 500".to_string(),
                Some(NOW + MINUTE),
            ),
            (claimed[1].action_id, "HTTP 400".to_string(), None),
        ];
        assert_eq!(queue.fail(&failures).unwrap(), 2);
        let actions = queue.actions().unwrap();
        assert_eq!(actions[0].status, Status::Pending);
        assert_eq!(actions[1].status, Status::Dead);
        assert!(queue.claim("email", 10, NOW, MINUTE).unwrap().is_empty());
        assert_eq!(
            queue
                .claim("email", 10, NOW + MINUTE, MINUTE)
                .unwrap()
                .len(),
            1
        );

        assert_eq!(queue.expire(NOW + 1, NOW + 1).unwrap(), 1, "the dead one");
        let left = queue.actions().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].status, Status::Delivering);
        assert_eq!(queue.depth().unwrap(), vec![("email".to_string(), 1)]);
    }

    #[test]
    fn forgetting_a_profile_removes_its_actions_and_keeps_the_others_ids() {
        let queue = Queue::in_memory().unwrap();
        let (candidates, payloads) = rows(&["a", "b", "c"], false);
        queue
            .run_trigger("t", &policy(&[]), candidates, &payloads, NOW, false)
            .unwrap();
        run(&queue, &policy(&[]), &["b", "d"], NOW + MINUTE);
        let before: Vec<(u64, String)> = queue
            .actions()
            .unwrap()
            .into_iter()
            .map(|a| (a.action_id, a.profile_id))
            .collect();
        assert_eq!(queue.forget_profile("b").unwrap(), 1);
        let after: Vec<(u64, String)> = queue
            .actions()
            .unwrap()
            .into_iter()
            .map(|a| (a.action_id, a.profile_id))
            .collect();
        let expected: Vec<(u64, String)> = before.into_iter().filter(|(_, p)| p != "b").collect();
        assert_eq!(after, expected);
        // b's checkpoint entry is gone: b fires again if it comes back.
        assert_eq!(
            sent(&run(&queue, &policy(&[]), &["b", "d"], NOW + 2 * MINUTE)),
            1
        );
    }
}
