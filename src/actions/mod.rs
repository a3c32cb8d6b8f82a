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

pub mod delivery;
pub mod policy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{C360Error, Result};
use policy::{Candidate, Decision, Policy};

const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("actions");
/// Pending actions by when they may be delivered: `(available_at µs, action_id)`.
const READY: TableDefinition<(i64, u64), ()> = TableDefinition::new("ready");
/// Each trigger's checkpoint: `trigger \x1f row key` → when it fired (µs).
const FIRED: TableDefinition<&str, i64> = TableDefinition::new("fired");
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub action_id: u64,
    pub trigger: String,
    pub profile_id: String,
    pub channel: String,
    /// The trigger row's columns, as a JSON object.
    pub payload: String,
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

pub struct Queue {
    /// Every operation holds the read side for its whole transaction; [`Queue::forget_profile`]
    /// takes the write side to swap in a rewritten file.
    db: RwLock<Arc<Database>>,
    /// The queue file (`None` in memory).
    path: Option<PathBuf>,
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
            copy_table(&from, &to, FIRED)?;
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
            txn.open_table(FIRED).map_err(store_error)?;
            txn.open_table(SENT).map_err(store_error)?;
            txn.open_table(RUNS).map_err(store_error)?;
            txn.open_table(COUNTERS).map_err(store_error)?;
        }
        txn.commit().map_err(store_error)?;
        Ok(Queue {
            db: RwLock::new(Arc::new(db)),
            path: None,
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
        now: i64,
        dry_run: bool,
    ) -> Result<RunOutcome> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut outcome = RunOutcome {
            candidates: rows.len() as u64,
            ..RunOutcome::default()
        };
        {
            let mut fired = txn.open_table(FIRED).map_err(store_error)?;
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            let mut sent = txn.open_table(SENT).map_err(store_error)?;
            let mut counters = txn.open_table(COUNTERS).map_err(store_error)?;

            // The checkpoint: rows true at the last run, and when they fired.
            let prefix = format!("{trigger}{SEPARATOR}");
            let mut previous: HashMap<String, i64> = HashMap::new();
            for entry in fired.range(prefix.as_str()..).map_err(store_error)? {
                let (key, at) = entry.map_err(store_error)?;
                let Some(row_key) = key.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                previous.insert(row_key.to_string(), at.value());
            }

            let mut next_id = counters
                .get("next_action_id")
                .map_err(store_error)?
                .map_or(1, |v| v.value());
            let mut seen = std::collections::HashSet::with_capacity(rows.len());
            for candidate in rows {
                if !seen.insert(candidate.key.clone()) {
                    outcome.candidates -= 1;
                    continue;
                }
                if let Some(&at) = previous.get(&candidate.key)
                    && !policy.refire_after.is_some_and(|after| now - at >= after)
                {
                    outcome.already_fired += 1;
                    continue;
                }
                let counter_key = format!("{}{SEPARATOR}{}", candidate.profile_id, policy.channel);
                let mut history: Vec<(i64, String)> =
                    match sent.get(counter_key.as_str()).map_err(store_error)? {
                        Some(bytes) => parse(bytes.value())?,
                        None => Vec::new(),
                    };
                let decision = policy.decide(trigger, &candidate, now, &history);
                if !dry_run {
                    let (status, reason, available_at) = match &decision {
                        Decision::Send { available_at } => (Status::Pending, None, *available_at),
                        Decision::Suppress(reason) => {
                            (Status::Suppressed, Some(reason.to_string()), now)
                        }
                        Decision::HoldOut => (Status::HeldOut, Some("holdout".into()), now),
                    };
                    let action = Action {
                        action_id: next_id,
                        trigger: trigger.to_string(),
                        profile_id: candidate.profile_id.clone(),
                        channel: policy.channel.clone(),
                        payload: candidate.payload.clone(),
                        idempotency_key: format!("{trigger}:{}:{}", candidate.key, now / 1000),
                        status,
                        reason,
                        created_at: now,
                        available_at,
                        attempts: 0,
                        last_error: None,
                        delivered_at: None,
                    };
                    actions
                        .insert(next_id, json(&action)?.as_slice())
                        .map_err(store_error)?;
                    if status == Status::Pending {
                        ready
                            .insert((available_at, next_id), ())
                            .map_err(store_error)?;
                        history.retain(|(at, _)| now - at <= policy::HISTORY_WINDOW_MICROS);
                        history.push((now, trigger.to_string()));
                        sent.insert(counter_key.as_str(), json(&history)?.as_slice())
                            .map_err(store_error)?;
                    }
                    next_id += 1;
                    fired
                        .insert(format!("{prefix}{}", candidate.key).as_str(), now)
                        .map_err(store_error)?;
                }
                outcome.decisions.push((candidate, decision));
            }
            if !dry_run {
                // Rows no longer true may fire again when they next become true.
                for key in previous.keys().filter(|k| !seen.contains(*k)) {
                    fired
                        .remove(format!("{prefix}{key}").as_str())
                        .map_err(store_error)?;
                }
                counters
                    .insert("next_action_id", next_id)
                    .map_err(store_error)?;
            }
        }
        if dry_run {
            txn.abort().map_err(store_error)?;
        } else {
            txn.commit().map_err(store_error)?;
        }
        Ok(outcome)
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
        let txn = db.begin_write().map_err(store_error)?;
        let mut claimed = Vec::new();
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            let mut due = Vec::new();
            for entry in ready
                .range((i64::MIN, 0)..=(now, u64::MAX))
                .map_err(store_error)?
            {
                let (key, _) = entry.map_err(store_error)?;
                due.push(key.value());
            }
            for (at, id) in due {
                if claimed.len() >= limit {
                    break;
                }
                let Some(bytes) = actions.get(id).map_err(store_error)? else {
                    continue;
                };
                let mut action: Action = parse(bytes.value())?;
                drop(bytes);
                if action.channel != channel {
                    continue;
                }
                ready.remove((at, id)).map_err(store_error)?;
                action.status = Status::Delivering;
                action.attempts += 1;
                action.available_at = now + visibility;
                ready
                    .insert((action.available_at, id), ())
                    .map_err(store_error)?;
                actions
                    .insert(id, json(&action)?.as_slice())
                    .map_err(store_error)?;
                claimed.push(action);
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(claimed)
    }

    /// Marks claimed actions delivered; returns how many were (others were not claimed).
    pub fn ack(&self, ids: &[u64], now: i64) -> Result<usize> {
        self.update(ids, |action, ready| {
            if action.status != Status::Delivering {
                return false;
            }
            ready.push((action.available_at, action.action_id, None));
            action.status = Status::Delivered;
            action.delivered_at = Some(now);
            true
        })
    }

    /// Returns a claimed action to `pending` at `retry_at`, or marks it `dead`.
    pub fn fail(&self, id: u64, error: &str, retry_at: Option<i64>) -> Result<usize> {
        self.update(&[id], |action, ready| {
            if action.status != Status::Delivering {
                return false;
            }
            action.last_error = Some(error.to_string());
            match retry_at {
                Some(at) => {
                    ready.push((action.available_at, action.action_id, Some(at)));
                    action.status = Status::Pending;
                    action.available_at = at;
                }
                None => {
                    ready.push((action.available_at, action.action_id, None));
                    action.status = Status::Dead;
                }
            }
            true
        })
    }

    /// Applies `change` to each action; it lists `(old available_at, id, new available_at)`
    /// moves of the ready index (`None`: out of it).
    fn update(
        &self,
        ids: &[u64],
        mut change: impl FnMut(&mut Action, &mut Vec<(i64, u64, Option<i64>)>) -> bool,
    ) -> Result<usize> {
        let db = self.db();
        let txn = db.begin_write().map_err(store_error)?;
        let mut changed = 0;
        {
            let mut actions = txn.open_table(ACTIONS).map_err(store_error)?;
            let mut ready = txn.open_table(READY).map_err(store_error)?;
            let mut moves = Vec::new();
            for &id in ids {
                let Some(bytes) = actions.get(id).map_err(store_error)? else {
                    continue;
                };
                let mut action: Action = parse(bytes.value())?;
                drop(bytes);
                if change(&mut action, &mut moves) {
                    actions
                        .insert(id, json(&action)?.as_slice())
                        .map_err(store_error)?;
                    changed += 1;
                }
            }
            for (old, id, new) in moves {
                ready.remove((old, id)).map_err(store_error)?;
                if let Some(new) = new {
                    ready.insert((new, id), ()).map_err(store_error)?;
                }
            }
        }
        txn.commit().map_err(store_error)?;
        Ok(changed)
    }

    /// Every action, oldest first (for the `actions` table).
    pub fn actions(&self) -> Result<Vec<Action>> {
        let db = self.db();
        let txn = db.begin_read().map_err(store_error)?;
        let table = txn.open_table(ACTIONS).map_err(store_error)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (_, bytes) = entry.map_err(store_error)?;
            all.push(parse(bytes.value())?);
        }
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

    /// Erases a person from the queue (`FORGET PROFILE`): their actions whatever their
    /// status, their place among the ready ones, the checkpoint keys that say a trigger
    /// fired for them, and the sent history that caps count. Trigger runs hold only
    /// counts and stay. Gives the number of actions deleted.
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
                let action: Action = parse(bytes.value())?;
                if action.profile_id == profile_id {
                    theirs.push((id.value(), action.available_at));
                }
            }
            for (id, available_at) in theirs {
                actions.remove(id).map_err(store_error)?;
                ready.remove((available_at, id)).map_err(store_error)?;
                deleted += 1;
            }

            // Row keys are the profile id, or `profile:dedup` (see refresh/triggers.rs).
            let mut fired = txn.open_table(FIRED).map_err(store_error)?;
            let dedup_prefix = format!("{profile_id}:");
            let mut keys = Vec::new();
            for entry in fired.iter().map_err(store_error)? {
                let (key, _) = entry.map_err(store_error)?;
                let row_key = key.value().split_once(SEPARATOR).map(|(_, row)| row);
                if row_key.is_some_and(|row| row == profile_id || row.starts_with(&dedup_prefix)) {
                    keys.push(key.value().to_string());
                }
            }
            for key in keys {
                fired.remove(key.as_str()).map_err(store_error)?;
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
        {
            let mut fired = txn.open_table(FIRED).map_err(store_error)?;
            let prefix = format!("{trigger}{SEPARATOR}");
            let mut keys = Vec::new();
            for entry in fired.range(prefix.as_str()..).map_err(store_error)? {
                let (key, _) = entry.map_err(store_error)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                keys.push(key.value().to_string());
            }
            for key in keys {
                fired.remove(key.as_str()).map_err(store_error)?;
            }
        }
        txn.commit().map_err(store_error)
    }
}
