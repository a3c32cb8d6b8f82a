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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{C360Error, Result};
use policy::{Candidate, Decision, Policy};
use record::{Skipped, SkippedBlock, decode_action, encode_action, idempotency_key, row_hash};
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
    db: Arc<Database>,
    pub stats: QueueStats,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
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
        Queue::with_tables(db)
    }

    /// A queue that lives as long as the process (for `memory://` storage roots).
    pub fn in_memory() -> Result<Queue> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(store_error)?;
        Queue::with_tables(db)
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
            db: Arc::new(db),
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
        let txn = self.db.begin_write().map_err(store_error)?;
        let mut outcome = RunOutcome {
            candidates: rows.len() as u64,
            ..RunOutcome::default()
        };
        {
            let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(store_error)?;
            let mut sent = txn.open_table(SENT).map_err(store_error)?;
            let previous = match checkpoints.get(trigger).map_err(store_error)? {
                Some(bytes) => record::decode_checkpoint(bytes.value())?,
                None => Vec::new(),
            };
            let mut checkpoint = Vec::with_capacity(rows.len());
            let mut seen = HashSet::with_capacity(rows.len());
            for candidate in rows {
                let hash = row_hash(&candidate.key);
                if !seen.insert(hash) {
                    outcome.candidates -= 1;
                    continue;
                }
                let fired_at = previous
                    .binary_search_by_key(&hash, |&(h, _)| h)
                    .ok()
                    .map(|i| previous[i].1);
                if let Some(at) = fired_at
                    && !policy.refire_after.is_some_and(|after| now - at >= after)
                {
                    outcome.already_fired += 1;
                    checkpoint.push((hash, at));
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
                checkpoint.push((hash, now));
                outcome.decisions.push((candidate, decision));
            }
            if !dry_run {
                checkpoint.sort_unstable_by_key(|&(hash, _)| hash);
                // Rows no longer true drop out, and may fire again when they next are.
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
        if dry_run {
            txn.abort().map_err(store_error)?;
        } else {
            txn.commit().map_err(store_error)?;
            self.stats
                .count_decisions(outcome.decisions.iter().map(|(_, d)| d));
        }
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
        let skipped: Vec<Skipped> = decisions
            .iter()
            .filter_map(|(candidate, decision)| {
                let (status, reason) = match decision {
                    Decision::Send { .. } => return None,
                    Decision::Suppress(reason) => (Status::Suppressed, reason.to_string()),
                    Decision::HoldOut => (Status::HeldOut, "holdout".to_string()),
                };
                Some(Skipped {
                    profile_id: candidate.profile_id.clone(),
                    row_key: candidate.key.clone(),
                    status,
                    reason,
                })
            })
            .collect();
        // Sent rows are numbered first, in query order; the rest follow as one block.
        if !skipped.is_empty() {
            let block = SkippedBlock {
                trigger: trigger.to_string(),
                channel: policy.channel.clone(),
                created_at: now,
                rows: skipped,
            };
            txn.open_table(SKIPPED)
                .map_err(store_error)?
                .insert(next_id, block.encode().as_slice())
                .map_err(store_error)?;
            next_id += block.rows.len() as u64;
        }

        counters
            .insert("next_action_id", next_id)
            .map_err(store_error)?;
        Ok(())
    }

    /// Records a run's statistics.
    pub fn record_run(&self, mut run: TriggerRun) -> Result<TriggerRun> {
        let txn = self.db.begin_write().map_err(store_error)?;
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
        let mut txn = self.db.begin_write().map_err(store_error)?;
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
        for _ in 0..retried {
            self.stats.retried();
        }
        for _ in 0..dead {
            self.stats.dead();
        }
        Ok(changed)
    }

    /// Applies `change` to each action: `None` leaves it as it is, `Some(next)` stores it,
    /// due again at `next` or out of the ready index.
    fn update(
        &self,
        ids: &[u64],
        mut change: impl FnMut(&mut Action) -> Option<Option<i64>>,
    ) -> Result<usize> {
        let txn = self.db.begin_write().map_err(store_error)?;
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
        let txn = self.db.begin_read().map_err(store_error)?;
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
        let txn = self.db.begin_read().map_err(store_error)?;
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
        let txn = self.db.begin_read().map_err(store_error)?;
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
        let txn = self.db.begin_write().map_err(store_error)?;
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

    /// Forgets a dropped trigger's checkpoint (its actions stay, as history).
    pub fn forget_trigger(&self, trigger: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(store_error)?;
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
}
