//! The one refresh engine: named queries (materialized views, segments) refreshed on a schedule
//! or on demand, committed atomically to the storage root, diffed against their last result.
//!
//! A refresh plans the query, fingerprints its inputs (see [`inputs`]) and stops there when
//! nothing it reads has changed. Otherwise it runs the query, diffs a segment's result against
//! its members, writes the result (and a segment's history rows) as new Parquet objects, and
//! commits by replacing the item's `CURRENT` manifest in one put. Only then is the result
//! published to SQL; readers see the previous one until that moment. A failed or killed
//! refresh leaves the last committed result in place, and the error shows in `segments` /
//! `materialized_views`. Each item has its own lock: two refreshes of one never run at once.
//!
//! Layout under the storage root, per item: `refresh/<name>/CURRENT` (JSON: definition,
//! result, history files, times), `refresh/<name>/results/r<id>.parquet`, and for segments
//! `refresh/<name>/changes/c<id>.parquet`. Objects no manifest names are left by a crash and
//! deleted by the item's next commit.

pub mod one_row;
pub mod schedule;
pub mod segments;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::actions::Payloads;
use crate::actions::policy::Decision;
use crate::actions::{Queue, TriggerRun};
use crate::config::ActionSettings;
use crate::ddl::{QueryDefinition, QueryKind};
use crate::error::{C360Error, Result};
use crate::storage::Storage;
use crate::storage::index::KeyKind;
use crate::storage::inputs;
use crate::storage::published::PublishedTable;
use crate::system_tables;
use one_row::OneRowCache;
use segments::Members;

const STATE_ROOT: &str = "refresh";

/// What a refresh did, for logs and the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshReport {
    pub name: String,
    pub kind: QueryKind,
    /// Nothing the query reads changed since the last refresh: nothing ran.
    pub skipped: bool,
    pub rows: usize,
    pub entered: usize,
    pub exited: usize,
    pub duration: Duration,
    /// Where the time went, so that slow refreshes can be explained rather than guessed at.
    pub phases: Phases,
}

/// The time one refresh spent in each of its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// Planning the query and fingerprinting its inputs.
    pub plan: Duration,
    /// Running the query.
    pub query: Duration,
    /// Diffing a segment's rows against its members.
    pub diff: Duration,
    /// Writing the result and history objects and the manifest.
    pub write: Duration,
    /// Publishing the result to SQL and the system tables.
    pub publish: Duration,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    definition: QueryDefinition,
    refresh_id: u64,
    /// The committed result, relative to the item's folder.
    result: String,
    /// A segment's history files, oldest first.
    #[serde(default)]
    changes: Vec<String>,
    last_refresh: DateTime<Utc>,
    last_duration_ms: u64,
    rows: usize,
}

/// One named query and its last committed result.
struct Item {
    definition: QueryDefinition,
    table: Arc<PublishedTable>,
    refresh_id: u64,
    result_file: String,
    changes_files: Vec<String>,
    /// A segment's members (empty for a materialized view).
    members: Members,
    /// A segment's history, as committed.
    changes: Vec<RecordBatch>,
    /// A segment's members as `segment_members` rows (arrays shared with `table`).
    tagged: Vec<RecordBatch>,
    rows: usize,
    last_refresh: Option<DateTime<Utc>>,
    last_attempt: DateTime<Utc>,
    last_duration_ms: Option<u64>,
    last_error: Option<String>,
    /// Fingerprint of the inputs at the last successful refresh.
    fingerprint: Option<u64>,
    /// Tables and views the query reads (to order refreshes and refuse unsafe drops).
    reads: BTreeSet<String>,
}

/// A committed result as a SQL table; a materialized view's is indexed on `profile_id` when
/// it has one: profiles are looked up by id far more often than scanned, and the index costs
/// 25 to 40 bytes a row (see [`crate::storage::index`]). Segments are not: twenty of them
/// refresh in one tick, where an index each would cost more time than their lookups save.
fn result_table(
    kind: QueryKind,
    schema: SchemaRef,
    result: Vec<RecordBatch>,
) -> Result<PublishedTable> {
    let keyed = kind == QueryKind::MaterializedView
        && schema
            .field_with_name(PROFILE_KEY)
            .is_ok_and(|field| KeyKind::of(field.data_type()).is_some());
    let indexed: &[&str] = if keyed { &[PROFILE_KEY] } else { &[] };
    Ok(PublishedTable::indexed(schema, result, indexed)?)
}

const PROFILE_KEY: &str = "profile_id";

/// A snapshot of one item for the system tables.
#[derive(Debug, Clone)]
pub struct Status {
    pub kind: QueryKind,
    pub name: String,
    pub query: String,
    pub schedule: Option<String>,
    pub rows: usize,
    pub last_refresh: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Every materialized view and segment of an engine.
pub struct RefreshEngine {
    storage: Storage,
    items: Mutex<BTreeMap<String, Arc<Mutex<Item>>>>,
    /// What the system tables show of each item, kept apart from the items so that
    /// publishing never waits for a refresh in progress.
    shown: std::sync::Mutex<BTreeMap<String, Shown>>,
    system: system_tables::Tables,
    queue: Arc<Queue>,
    action_settings: ActionSettings,
    visibility_micros: i64,
    retention_micros: i64,
}

/// One item as the system tables show it (arrays shared, not copied).
#[derive(Clone)]
struct Shown {
    status: Status,
    members: Vec<RecordBatch>,
    changes: Vec<RecordBatch>,
}

impl Shown {
    fn of(item: &Item) -> Shown {
        Shown {
            status: Status {
                kind: item.definition.kind,
                name: item.definition.name.clone(),
                query: item.definition.query.clone(),
                schedule: item.definition.schedule.as_ref().map(ToString::to_string),
                rows: item.rows,
                last_refresh: item.last_refresh,
                last_duration_ms: item.last_duration_ms,
                last_error: item.last_error.clone(),
            },
            members: item.tagged.clone(),
            changes: item.changes.clone(),
        }
    }
}

impl RefreshEngine {
    /// Registers the system tables and reinstalls every item committed in the storage root,
    /// with its last result, so that definitions made over pgwire survive restarts.
    pub async fn open(
        ctx: &SessionContext,
        storage: Storage,
        action_settings: ActionSettings,
    ) -> Result<RefreshEngine> {
        let queue = Arc::new(match storage.url().scheme() {
            // An ephemeral root gets an ephemeral queue.
            "memory" if action_settings.queue.is_empty() => Queue::in_memory()?,
            _ => Queue::open(&queue_path(&storage, &action_settings)?)?,
        });
        let visibility = crate::ddl::parse_interval(&action_settings.visibility_timeout)
            .map_err(|e| C360Error::Config(format!("actions.visibility_timeout: {}", e.0)))?;
        let visibility_micros = visibility.as_micros() as i64;
        let retention = crate::ddl::parse_interval(&action_settings.retention)
            .map_err(|e| C360Error::Config(format!("actions.retention: {}", e.0)))?;
        let engine = RefreshEngine {
            system: system_tables::Tables::register(ctx, &queue, visibility_micros)?,
            visibility_micros,
            retention_micros: retention.as_micros() as i64,
            queue,
            action_settings,
            storage,
            items: Mutex::new(BTreeMap::new()),
            shown: std::sync::Mutex::new(BTreeMap::new()),
        };
        for name in engine.storage.list_children(STATE_ROOT).await? {
            let Some(manifest) = engine.read_manifest(&name).await? else {
                continue;
            };
            let item = engine.load(&name, manifest).await?;
            if item.definition.kind != QueryKind::Trigger {
                ctx.register_table(name.as_str(), Arc::clone(&item.table) as _)?;
            }
            engine.show(&item);
            engine
                .items
                .lock()
                .await
                .insert(name, Arc::new(Mutex::new(item)));
        }
        engine.publish_system_tables()?;
        Ok(engine)
    }

    /// `CREATE SEGMENT` / `CREATE MATERIALIZED VIEW`: checks the query, runs it once and
    /// commits the result before the name appears in SQL. With `declarative` (a workspace
    /// being applied) an identical definition is kept as it is, a changed one replaced.
    pub async fn create(
        &self,
        ctx: &SessionContext,
        definition: QueryDefinition,
        declarative: bool,
    ) -> Result<Option<RefreshReport>> {
        let name = definition.name.clone();
        let kind_name = definition.kind.sql_name();
        let existing = self.items.lock().await.get(&name).cloned();
        if let Some(existing) = &existing {
            let existing = existing.lock().await;
            if existing.definition.kind != definition.kind {
                return Err(C360Error::AlreadyExists(format!(
                    "{} {name}",
                    existing.definition.kind.sql_name()
                )));
            }
            if same_definition(&existing.definition, &definition)
                && (declarative || definition.if_not_exists)
            {
                return Ok(None);
            }
            if !(declarative || definition.or_replace) {
                return Err(C360Error::AlreadyExists(format!("{kind_name} {name}")));
            }
        } else if ctx.table_exist(name.as_str())? {
            return Err(C360Error::AlreadyExists(format!(
                "a table or view named {name}"
            )));
        }

        // Plans the query now, so that a bad one changes nothing.
        let frame = ctx
            .sql(&definition.query)
            .await
            .map_err(|e| C360Error::InvalidArgument(format!("{kind_name} {name}: {e}")))?;
        match definition.kind {
            QueryKind::Segment => {
                segments::members_schema(frame.schema().as_arrow())
                    .map_err(|e| C360Error::InvalidArgument(format!("segment {name}: {e}")))?;
            }
            QueryKind::Trigger => {
                triggers::prepare(ctx, &definition, &self.action_settings).await?;
            }
            QueryKind::MaterializedView => {}
        }
        let reads = inputs::inputs_of(frame.logical_plan())?;
        if reads.names().any(|read| *read == name) {
            return Err(C360Error::InvalidArgument(format!(
                "{kind_name} {name} cannot read itself"
            )));
        }

        let item = match existing {
            // Replacing: the history and members carry over, so that the change of
            // definition shows as people entering and leaving.
            Some(existing) => {
                let mut item = existing.lock().await;
                let previous = item.definition.clone();
                item.definition = definition;
                item.fingerprint = None;
                if item.definition.kind == QueryKind::Trigger {
                    // A trigger first runs on its schedule or REFRESH TRIGGER, not here: its
                    // checkpoint carries over, so rows that fired do not fire again.
                    let saved = self.save_definition(&item).await;
                    if saved.is_err() {
                        item.definition = previous;
                    }
                    self.show(&item);
                    self.publish_system_tables()?;
                    return saved.map(|()| None);
                }
                let refreshed = self
                    .refresh_locked(ctx, &mut item, &OneRowCache::new())
                    .await;
                if refreshed.is_err() {
                    item.definition = previous;
                }
                self.show(&item);
                self.publish_system_tables()?;
                return refreshed.map(Some);
            }
            None => Item {
                table: Arc::new(PublishedTable::new(Arc::new(Schema::empty()), Vec::new())?),
                definition,
                refresh_id: self.last_refresh_id(&name).await?,
                result_file: String::new(),
                changes_files: Vec::new(),
                members: Members::new(),
                changes: Vec::new(),
                tagged: Vec::new(),
                rows: 0,
                last_refresh: None,
                last_attempt: Utc::now(),
                last_duration_ms: None,
                last_error: None,
                fingerprint: None,
                reads: BTreeSet::new(),
            },
        };
        let mut item = item;
        if item.definition.kind == QueryKind::Trigger {
            // Created, not run: `EXPLAIN TRIGGER` shows what its first run would send.
            self.save_definition(&item).await?;
            self.show(&item);
            self.items
                .lock()
                .await
                .insert(name, Arc::new(Mutex::new(item)));
            self.publish_system_tables()?;
            return Ok(None);
        }
        let report = self
            .refresh_locked(ctx, &mut item, &OneRowCache::new())
            .await?;
        if item.definition.kind != QueryKind::Trigger {
            ctx.register_table(name.as_str(), Arc::clone(&item.table) as _)?;
        }
        self.show(&item);
        self.items
            .lock()
            .await
            .insert(name, Arc::new(Mutex::new(item)));
        self.publish_system_tables()?;
        Ok(Some(report))
    }

    /// `REFRESH SEGMENT` / `REFRESH MATERIALIZED VIEW`. Waits for a refresh already running.
    pub async fn refresh(
        &self,
        ctx: &SessionContext,
        kind: Option<QueryKind>,
        name: &str,
    ) -> Result<RefreshReport> {
        let item = self.get(kind, name).await?;
        let mut item = item.lock().await;
        let result = self
            .refresh_locked(ctx, &mut item, &OneRowCache::new())
            .await;
        // A skipped refresh changed nothing that the system tables show.
        if !result.as_ref().is_ok_and(|report| report.skipped) {
            self.show(&item);
            self.publish_system_tables()?;
        }
        result
    }

    /// Refreshes `names` as one schedule tick. Segments and materialized views run in waves:
    /// each wave holds the items that read none of the items still to run, and its items run
    /// concurrently (a query's operators already use every core, but a refresh also waits on
    /// storage and spends time in single-threaded steps, which another item's work fills).
    /// Triggers run last, one at a time in the order given, since a frequency cap shared by
    /// two triggers goes to whichever runs first. The system tables are published once per
    /// wave rather than once per item. Each item's outcome is returned in the order run.
    pub async fn refresh_tick(
        &self,
        ctx: &SessionContext,
        names: &[String],
    ) -> Vec<(String, Result<RefreshReport>)> {
        let mut outcomes = Vec::with_capacity(names.len());
        let mut pending: BTreeMap<String, (Arc<Mutex<Item>>, BTreeSet<String>)> = BTreeMap::new();
        let mut triggers = Vec::new();
        for name in names {
            let item = match self.get(None, name).await {
                Ok(item) => item,
                Err(e) => {
                    outcomes.push((name.clone(), Err(e)));
                    continue;
                }
            };
            let (kind, reads) = {
                let locked = item.lock().await;
                (locked.definition.kind, locked.reads.clone())
            };
            if kind == QueryKind::Trigger {
                triggers.push((name.clone(), item));
                continue;
            }
            // After a restart an item learns what it reads by running; plan it to know now.
            let reads = if reads.is_empty() {
                match self.reads_of(ctx, &item).await {
                    Ok(reads) => reads,
                    Err(e) => {
                        outcomes.push((name.clone(), Err(e)));
                        continue;
                    }
                }
            } else {
                reads
            };
            pending.insert(name.clone(), (item, reads));
        }

        let concurrency = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        // Clocks and other one-row subqueries that several items share are computed once.
        let shared = OneRowCache::new();
        let shared = &shared;
        while !pending.is_empty() {
            let reads: BTreeMap<&String, &BTreeSet<String>> = pending
                .iter()
                .map(|(name, (_, reads))| (name, reads))
                .collect();
            let wave = next_wave(&reads);
            let items: Vec<(String, Arc<Mutex<Item>>)> = wave
                .iter()
                .filter_map(|name| pending.remove(name).map(|(item, _)| (name.clone(), item)))
                .collect();
            let done: Vec<(String, Result<RefreshReport>)> = futures::stream::iter(items)
                .map(|(name, item)| async move {
                    let mut item = item.lock().await;
                    let result = self.refresh_locked(ctx, &mut item, shared).await;
                    if !result.as_ref().is_ok_and(|report| report.skipped) {
                        self.show(&item);
                    }
                    (name, result)
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            if done
                .iter()
                .any(|(_, r)| !r.as_ref().is_ok_and(|r| r.skipped))
                && let Err(e) = self.publish_system_tables()
            {
                tracing::warn!(error = %e, "could not publish the system tables");
            }
            outcomes.extend(done);
        }
        for (name, item) in triggers {
            let mut item = item.lock().await;
            let result = self.refresh_locked(ctx, &mut item, shared).await;
            if !result.as_ref().is_ok_and(|report| report.skipped) {
                self.show(&item);
                if let Err(e) = self.publish_system_tables() {
                    tracing::warn!(error = %e, "could not publish the system tables");
                }
            }
            outcomes.push((name, result));
        }
        outcomes
    }

    /// The tables and views an item's query reads, planned now.
    async fn reads_of(&self, ctx: &SessionContext, item: &Mutex<Item>) -> Result<BTreeSet<String>> {
        let query = item.lock().await.definition.query.clone();
        let frame = ctx.sql(&query).await?;
        let inputs = inputs::inputs_of(frame.logical_plan())?;
        Ok(inputs.names().cloned().collect())
    }

    /// `DROP SEGMENT` / `DROP MATERIALIZED VIEW`: refused while another item reads it.
    pub async fn drop_item(
        &self,
        ctx: &SessionContext,
        kind: QueryKind,
        name: &str,
        if_exists: bool,
    ) -> Result<()> {
        let mut items = self.items.lock().await;
        let Some(item) = items.get(name).cloned() else {
            return if if_exists {
                Ok(())
            } else {
                Err(C360Error::NotFound(format!("{} {name}", kind.sql_name())))
            };
        };
        if item.lock().await.definition.kind != kind {
            return Err(C360Error::NotFound(format!("{} {name}", kind.sql_name())));
        }
        for (other, other_item) in items.iter() {
            if other != name && other_item.lock().await.reads.contains(name) {
                return Err(C360Error::DependentObjects(format!(
                    "cannot drop {} {name}: {other} reads it (drop {other} first)",
                    kind.sql_name()
                )));
            }
        }
        items.remove(name);
        drop(items);
        if kind == QueryKind::Trigger {
            self.queue.forget_trigger(name)?;
        } else {
            ctx.deregister_table(name)?;
        }
        self.storage
            .delete_prefix(&format!("{STATE_ROOT}/{name}"))
            .await?;
        self.unshow(name);
        self.publish_system_tables()
    }

    /// Erases a person from materialized results (`FORGET PROFILE`, after their landed rows
    /// and identity state are gone): every materialized view and segment is refreshed,
    /// inputs before readers, so that its result is recomputed without them and the old
    /// result file deleted; then the profile's rows leave each segment's history
    /// (`segment_changes`), rewritten as one file that replaces the old ones. Triggers are
    /// not run: that would send messages; their state is the queue's to erase.
    pub async fn forget_profile(&self, ctx: &SessionContext, profile_id: &str) -> Result<()> {
        let items = self.all_items().await;
        let mut reads = BTreeMap::new();
        for (name, item) in &items {
            let item = item.lock().await;
            if item.definition.kind == QueryKind::Trigger {
                continue;
            }
            // Planned now: after a restart an item knows what it reads only once it ran.
            let frame = ctx.sql(&item.definition.query).await?;
            let inputs = inputs::inputs_of(frame.logical_plan())?;
            reads.insert(name.clone(), inputs.names().cloned().collect());
        }
        let by_name: BTreeMap<String, Arc<Mutex<Item>>> = items.into_iter().collect();
        for name in dependency_order(reads) {
            let Some(item) = by_name.get(&name) else {
                continue;
            };
            let mut item = item.lock().await;
            // Forced: a view over a source the fingerprint does not see would be skipped.
            item.fingerprint = None;
            self.refresh_locked(ctx, &mut item, &OneRowCache::new())
                .await?;
            if item.definition.kind == QueryKind::Segment {
                self.erase_history(&mut item, profile_id).await?;
            }
            self.show(&item);
        }
        self.publish_system_tables()
    }

    /// Rewrites a segment's history without `profile_id`'s rows, committed like a refresh:
    /// the new file, then the manifest naming it, then the old files deleted.
    async fn erase_history(&self, item: &mut Item, profile_id: &str) -> Result<()> {
        let mut kept = Vec::with_capacity(item.changes.len());
        for batch in &item.changes {
            kept.push(segments::without_profile(batch, profile_id)?);
        }
        kept.retain(|batch| batch.num_rows() > 0);
        let name = item.definition.name.clone();
        let folder = format!("{STATE_ROOT}/{name}");
        let mut changes_files = Vec::new();
        if !kept.is_empty() {
            let file = format!("changes/e{:010}.parquet", item.refresh_id);
            self.storage
                .put_parquet(
                    &format!("{folder}/{file}"),
                    segments::changes_schema(),
                    &kept,
                )
                .await?;
            changes_files.push(file);
        }
        let manifest = Manifest {
            definition: item.definition.clone(),
            refresh_id: item.refresh_id,
            result: item.result_file.clone(),
            changes: changes_files.clone(),
            last_refresh: item.last_refresh.unwrap_or(item.last_attempt),
            last_duration_ms: item.last_duration_ms.unwrap_or(0),
            rows: item.rows,
        };
        self.storage
            .put_json(&format!("{folder}/CURRENT"), &manifest)
            .await?;
        self.remove_unnamed(&folder, &manifest).await?;
        item.changes = kept;
        item.changes_files = changes_files;
        Ok(())
    }

    /// Every item, by name, without holding the map while each is looked at.
    async fn all_items(&self) -> Vec<(String, Arc<Mutex<Item>>)> {
        self.items
            .lock()
            .await
            .iter()
            .map(|(name, item)| (name.clone(), Arc::clone(item)))
            .collect()
    }

    /// Items whose schedule says a refresh is due at `now`, inputs before their readers.
    pub async fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        let items = self.all_items().await;
        let mut due = BTreeMap::new();
        let mut trigger_priority = BTreeMap::new();
        for (name, item) in items {
            // An item being refreshed is not due: skip it rather than wait for it.
            if let Ok(item) = item.try_lock()
                && let Some(schedule) = &item.definition.schedule
                && schedule
                    .next_after(item.last_attempt)
                    .is_some_and(|next| next <= now)
            {
                if item.definition.kind == QueryKind::Trigger {
                    let priority = item
                        .definition
                        .options
                        .get("priority")
                        .and_then(|p| p.trim().parse::<i64>().ok())
                        .unwrap_or(0);
                    trigger_priority.insert(name.clone(), priority);
                }
                due.insert(name, item.reads.clone());
            }
        }
        // Triggers read what the others produce, and run highest priority first, so that
        // when a cap allows one more message the most important trigger takes it.
        let (mut ordered, mut triggers): (Vec<String>, Vec<String>) = dependency_order(due)
            .into_iter()
            .partition(|name| !trigger_priority.contains_key(name));
        triggers.sort_by_key(|name| std::cmp::Reverse(trigger_priority.get(name).copied()));
        ordered.extend(triggers);
        ordered
    }

    /// The outbound action queue that triggers fill.
    pub fn queue(&self) -> Arc<Queue> {
        Arc::clone(&self.queue)
    }

    /// How long a claimed action stays invisible to other consumers.
    pub fn visibility_micros(&self) -> i64 {
        self.visibility_micros
    }

    /// Removes the finished actions and trigger runs older than `actions.retention`.
    pub async fn expire_actions(&self) -> Result<u64> {
        let queue = Arc::clone(&self.queue);
        let now = Utc::now().timestamp_micros();
        let before = now - self.retention_micros;
        tokio::task::spawn_blocking(move || queue.expire(before, now))
            .await
            .map_err(|e| C360Error::Queue(e.to_string()))?
    }

    /// `EXPLAIN TRIGGER`: what a run would do now, row by row, without enqueuing anything.
    pub async fn explain_trigger(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<crate::QueryResult> {
        let item = self.get(Some(QueryKind::Trigger), name).await?;
        let definition = item.lock().await.definition.clone();
        let prepared = triggers::prepare(ctx, &definition, &self.action_settings).await?;
        let (candidates, payloads) = triggers::candidates(ctx, &prepared).await?;
        let queue = Arc::clone(&self.queue);
        let now = Utc::now().timestamp_micros();
        let trigger = name.to_string();
        let (outcome, rendered) = tokio::task::spawn_blocking(move || {
            let outcome =
                queue.run_trigger(&trigger, &prepared.policy, candidates, &payloads, now, true)?;
            let rows: Vec<usize> = outcome.decisions.iter().map(|(c, _)| c.row).collect();
            let rendered = payloads.render(&rows)?;
            Ok::<_, C360Error>((outcome, rendered))
        })
        .await
        .map_err(|e| C360Error::Queue(e.to_string()))??;
        system_tables::explain_trigger(&outcome, &rendered, now)
    }

    /// What `segments` and `materialized_views` show, item by item.
    pub fn statuses(&self) -> Vec<Status> {
        self.shown_items()
            .into_iter()
            .map(|shown| shown.status)
            .collect()
    }

    fn shown_items(&self) -> Vec<Shown> {
        self.shown
            .lock()
            .map(|shown| shown.values().cloned().collect())
            .unwrap_or_default()
    }

    fn show(&self, item: &Item) {
        if let Ok(mut shown) = self.shown.lock() {
            shown.insert(item.definition.name.clone(), Shown::of(item));
        }
    }

    fn unshow(&self, name: &str) {
        if let Ok(mut shown) = self.shown.lock() {
            shown.remove(name);
        }
    }

    async fn get(&self, kind: Option<QueryKind>, name: &str) -> Result<Arc<Mutex<Item>>> {
        let what = kind.map_or("segment or materialized view", QueryKind::sql_name);
        let item = self
            .items
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| C360Error::NotFound(format!("{what} {name}")))?;
        if let Some(kind) = kind
            && item.lock().await.definition.kind != kind
        {
            return Err(C360Error::NotFound(format!("{what} {name}")));
        }
        Ok(item)
    }

    /// Runs one refresh of a locked item; on failure records the error and keeps the result.
    async fn refresh_locked(
        &self,
        ctx: &SessionContext,
        item: &mut Item,
        tick: &OneRowCache,
    ) -> Result<RefreshReport> {
        let started = Instant::now();
        item.last_attempt = Utc::now();
        match self.run(ctx, item, started, tick).await {
            Ok(report) => {
                item.last_error = None;
                Ok(report)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(name = %item.definition.name, error = %message, "refresh failed");
                item.last_error = Some(message);
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        ctx: &SessionContext,
        item: &mut Item,
        started: Instant,
        tick: &OneRowCache,
    ) -> Result<RefreshReport> {
        let definition = item.definition.clone();
        let name = &definition.name;
        let frame = ctx.sql(&definition.query).await?;
        let inputs = inputs::inputs_of(frame.logical_plan())?;
        let fingerprint = inputs::fingerprint(ctx, &inputs).await?;
        item.reads = inputs.names().cloned().collect();
        let mut report = RefreshReport {
            name: name.clone(),
            kind: definition.kind,
            skipped: false,
            rows: item.rows,
            entered: 0,
            exited: 0,
            duration: Duration::ZERO,
            phases: Phases {
                plan: started.elapsed(),
                ..Phases::default()
            },
        };
        // A trigger that may fire a row again after a while depends on the clock too.
        let clock_bound = definition.options.contains_key("refire_after");
        if fingerprint.is_some() && fingerprint == item.fingerprint && !clock_bound {
            report.skipped = true;
            report.duration = started.elapsed();
            return Ok(report);
        }
        if definition.kind == QueryKind::Trigger {
            return self
                .run_trigger(ctx, item, started, fingerprint, report)
                .await;
        }

        let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let step = Instant::now();
        let plan = one_row::inline(ctx, frame.logical_plan().clone(), tick).await?;
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        report.phases.query = step.elapsed();
        let step = Instant::now();
        // Execution may refine the planned schema (nullability, metadata): keep what ran.
        let query_schema = batches.first().map_or(planned, RecordBatch::schema);
        let refresh_id = item.refresh_id + 1;
        let now = Utc::now();
        let (schema, result, diff) = match definition.kind {
            QueryKind::MaterializedView | QueryKind::Trigger => (query_schema, batches, None),
            QueryKind::Segment => {
                let batches = if batches.is_empty() {
                    vec![RecordBatch::new_empty(query_schema)]
                } else {
                    batches
                };
                // CPU-bound: on a blocking thread, so that the items of a tick refreshed
                // alongside this one keep their async workers.
                let (segment, previous) = (name.clone(), item.members.clone());
                let micros = now.timestamp_micros();
                let diff = tokio::task::spawn_blocking(move || {
                    segments::diff(&segment, &previous, &batches, refresh_id, micros)
                })
                .await
                .map_err(|e| C360Error::Task {
                    what: format!("the diff of segment {name}"),
                    message: e.to_string(),
                })??;
                (diff.schema.clone(), diff.members.clone(), Some(diff))
            }
        };
        let rows = result.iter().map(RecordBatch::num_rows).sum();
        report.phases.diff = step.elapsed();
        let step = Instant::now();

        // Commit: the new objects first, then the manifest that names them.
        let folder = format!("{STATE_ROOT}/{name}");
        let result_file = format!("results/r{refresh_id:010}.parquet");
        self.storage
            .put_parquet(&format!("{folder}/{result_file}"), schema.clone(), &result)
            .await?;
        let mut changes_files = item.changes_files.clone();
        if let Some(changes) = diff.as_ref().and_then(|d| d.changes.as_ref()) {
            let file = format!("changes/c{refresh_id:010}.parquet");
            self.storage
                .put_parquet(
                    &format!("{folder}/{file}"),
                    segments::changes_schema(),
                    std::slice::from_ref(changes),
                )
                .await?;
            changes_files.push(file);
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let manifest = Manifest {
            definition: definition.clone(),
            refresh_id,
            result: result_file.clone(),
            changes: changes_files.clone(),
            last_refresh: now,
            last_duration_ms: duration_ms,
            rows,
        };
        self.storage
            .put_json(&format!("{folder}/CURRENT"), &manifest)
            .await?;
        if let Err(e) = self.remove_unnamed(&folder, &manifest).await {
            tracing::warn!(name = %name, error = %e, "could not delete superseded results");
        }

        report.phases.write = step.elapsed();
        let step = Instant::now();

        // Published only once committed.
        if item.table.schema() == schema {
            item.table.publish(result)?;
        } else {
            let table = Arc::new(result_table(definition.kind, schema, result)?);
            if ctx.table_exist(name.as_str())? {
                ctx.deregister_table(name.as_str())?;
                ctx.register_table(name.as_str(), Arc::clone(&table) as _)?;
            }
            item.table = table;
        }
        if let Some(diff) = diff {
            item.tagged = segments::tagged_members(name, &diff.members)?;
            item.members = diff.current;
            item.changes.extend(diff.changes);
            report.entered = diff.entered;
            report.exited = diff.exited;
        }
        item.refresh_id = refresh_id;
        item.result_file = result_file;
        item.changes_files = changes_files;
        item.rows = rows;
        item.last_refresh = Some(now);
        item.last_duration_ms = Some(duration_ms);
        item.fingerprint = fingerprint;
        report.rows = rows;
        report.phases.publish = step.elapsed();
        report.duration = started.elapsed();
        Ok(report)
    }

    /// One trigger run: its rows, decided and enqueued with the checkpoint in one queue
    /// transaction, then its statistics recorded.
    async fn run_trigger(
        &self,
        ctx: &SessionContext,
        item: &mut Item,
        started: Instant,
        fingerprint: Option<u64>,
        mut report: RefreshReport,
    ) -> Result<RefreshReport> {
        let definition = item.definition.clone();
        let name = definition.name.clone();
        let started_at = Utc::now();
        let prepared = triggers::prepare(ctx, &definition, &self.action_settings).await?;
        let (candidates, payloads) = triggers::candidates(ctx, &prepared).await?;
        let queue = Arc::clone(&self.queue);
        let now = started_at.timestamp_micros();
        let trigger = name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            queue.run_trigger(
                &trigger,
                &prepared.policy,
                candidates,
                &payloads,
                now,
                false,
            )
        })
        .await
        .map_err(|e| C360Error::Queue(e.to_string()))??;

        let mut suppressed = std::collections::HashMap::new();
        for (_, decision) in &outcome.decisions {
            if let Decision::Suppress(reason) = decision {
                *suppressed.entry(reason.to_string()).or_insert(0) += 1;
            }
        }
        let enqueued = outcome.count(|d| matches!(d, Decision::Send { .. }));
        let held_out = outcome.count(|d| matches!(d, Decision::HoldOut));
        let duration_ms = started.elapsed().as_millis() as u64;
        let run = TriggerRun {
            trigger: name.clone(),
            run_id: 0,
            started_at: now,
            duration_ms,
            candidates: outcome.candidates,
            enqueued,
            held_out,
            suppressed: suppressed.clone(),
            error: None,
        };
        let queue = Arc::clone(&self.queue);
        tokio::task::spawn_blocking(move || queue.record_run(run))
            .await
            .map_err(|e| C360Error::Queue(e.to_string()))??;

        item.refresh_id += 1;
        item.rows = outcome.candidates as usize;
        item.last_refresh = Some(started_at);
        item.last_duration_ms = Some(duration_ms);
        self.save_definition(item).await?;
        item.fingerprint = fingerprint;
        report.rows = outcome.candidates as usize;
        report.entered = enqueued as usize;
        report.exited = suppressed.values().sum::<u64>() as usize + held_out as usize;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Writes a trigger's manifest: its definition and last run (its checkpoint is in the
    /// queue), so that it survives restarts like the others.
    async fn save_definition(&self, item: &Item) -> Result<()> {
        let name = &item.definition.name;
        let manifest = Manifest {
            definition: item.definition.clone(),
            refresh_id: item.refresh_id,
            result: String::new(),
            changes: Vec::new(),
            last_refresh: item.last_refresh.unwrap_or(item.last_attempt),
            last_duration_ms: item.last_duration_ms.unwrap_or(0),
            rows: item.rows,
        };
        self.storage
            .put_json(&format!("{STATE_ROOT}/{name}/CURRENT"), &manifest)
            .await
    }

    /// Deletes results and history files that the committed manifest does not name: the
    /// superseded result, and whatever a killed refresh left behind.
    async fn remove_unnamed(&self, folder: &str, manifest: &Manifest) -> Result<()> {
        let named: BTreeSet<&str> = std::iter::once(manifest.result.as_str())
            .chain(manifest.changes.iter().map(String::as_str))
            .collect();
        for sub in ["results", "changes"] {
            for file in self.storage.list_files(&format!("{folder}/{sub}")).await? {
                if !named.contains(format!("{sub}/{file}").as_str()) {
                    // `delete`, not `delete_prefix`: listing a file's own path finds nothing
                    // on a local root, so superseded results used to stay on disk.
                    self.storage
                        .delete(&format!("{folder}/{sub}/{file}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn read_manifest(&self, name: &str) -> Result<Option<Manifest>> {
        self.storage
            .get_json(&format!("{STATE_ROOT}/{name}/CURRENT"))
            .await
    }

    /// The refresh id to continue from, so that history ids never repeat after a re-create.
    async fn last_refresh_id(&self, name: &str) -> Result<u64> {
        Ok(self
            .read_manifest(name)
            .await?
            .map_or(0, |manifest| manifest.refresh_id))
    }

    async fn load(&self, name: &str, manifest: Manifest) -> Result<Item> {
        let folder = format!("{STATE_ROOT}/{name}");
        let (schema, result) = if manifest.definition.kind == QueryKind::Trigger {
            (Arc::new(Schema::empty()), Vec::new())
        } else {
            self.storage
                .get_parquet_with_schema(&format!("{folder}/{}", manifest.result))
                .await?
        };
        let mut changes = Vec::new();
        for file in &manifest.changes {
            changes.extend(
                self.storage
                    .get_parquet(&format!("{folder}/{file}"))
                    .await?,
            );
        }
        let members = match manifest.definition.kind {
            QueryKind::Segment => segments::members_of(&result)?,
            QueryKind::MaterializedView | QueryKind::Trigger => Members::new(),
        };
        let result_batches = result.clone();
        Ok(Item {
            table: Arc::new(result_table(manifest.definition.kind, schema, result)?),
            refresh_id: manifest.refresh_id,
            result_file: manifest.result,
            changes_files: manifest.changes,
            members,
            tagged: match manifest.definition.kind {
                QueryKind::Segment => segments::tagged_members(name, &result_batches)?,
                QueryKind::MaterializedView | QueryKind::Trigger => Vec::new(),
            },
            changes,
            rows: manifest.rows,
            last_refresh: Some(manifest.last_refresh),
            last_attempt: manifest.last_refresh,
            last_duration_ms: Some(manifest.last_duration_ms),
            last_error: None,
            fingerprint: None,
            reads: BTreeSet::new(),
            definition: manifest.definition,
        })
    }

    fn publish_system_tables(&self) -> Result<()> {
        let shown = self.shown_items();
        let statuses: Vec<Status> = shown.iter().map(|s| s.status.clone()).collect();
        let members = shown
            .iter()
            .flat_map(|s| s.members.iter().cloned())
            .collect();
        let changes = shown.into_iter().flat_map(|s| s.changes).collect();
        self.system.publish(&statuses, members, changes)
    }
}

fn same_definition(a: &QueryDefinition, b: &QueryDefinition) -> bool {
    a.kind == b.kind
        && a.name == b.name
        && a.query == b.query
        && a.schedule == b.schedule
        && a.channel == b.channel
        && a.options == b.options
}

/// The queue's file: as configured, or in the storage root when that is a local directory.
fn queue_path(storage: &Storage, settings: &ActionSettings) -> Result<std::path::PathBuf> {
    if !settings.queue.is_empty() {
        return Ok(std::path::PathBuf::from(&settings.queue));
    }
    match storage.url().to_file_path() {
        Ok(root) if storage.url().scheme() == "file" => Ok(root.join("actions.redb")),
        _ => Err(C360Error::Config(format!(
            "the storage root {} is not a local directory: set actions.queue to a local file \
             for the action queue",
            storage.url()
        ))),
    }
}

/// The items of `pending` (name → what it reads) that can run now: those reading no other
/// pending item. All of them when there are none such (a cycle cannot be created, as an item
/// cannot read what does not exist yet, but a tick must never stall on one).
fn next_wave(pending: &BTreeMap<&String, &BTreeSet<String>>) -> Vec<String> {
    let ready: Vec<String> = pending
        .iter()
        .filter(|(_, reads)| reads.iter().all(|read| !pending.contains_key(read)))
        .map(|(name, _)| (*name).clone())
        .collect();
    if ready.is_empty() {
        pending.keys().map(|name| (*name).clone()).collect()
    } else {
        ready
    }
}

/// Orders `due` items so that one reading another comes after it.
fn dependency_order(due: BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut ordered = Vec::with_capacity(due.len());
    let mut placed = BTreeSet::new();
    while ordered.len() < due.len() {
        let before = ordered.len();
        for (name, reads) in &due {
            if !placed.contains(name)
                && reads
                    .iter()
                    .all(|read| !due.contains_key(read) || placed.contains(read))
            {
                ordered.push(name.clone());
                placed.insert(name.clone());
            }
        }
        if ordered.len() == before {
            // A cycle cannot be created (an item cannot read what does not exist yet), but
            // never loop forever on one.
            ordered.extend(due.keys().filter(|n| !placed.contains(*n)).cloned());
            break;
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(name, reads)| {
                (
                    name.to_string(),
                    reads.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect()
    }

    fn waves(pending: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
        let mut left: BTreeMap<&String, &BTreeSet<String>> = pending.iter().collect();
        let mut waves = Vec::new();
        while !left.is_empty() {
            let wave = next_wave(&left);
            for name in &wave {
                left.remove(name);
            }
            waves.push(wave);
        }
        waves
    }

    #[test]
    fn a_tick_runs_readers_after_their_inputs_and_the_rest_together() {
        let pending = reads(&[
            ("profiles", &["customers_records", "events"]),
            ("high_value", &["profiles"]),
            ("lapsed", &["profiles"]),
            ("high_value_lapsed", &["high_value", "lapsed"]),
            ("browsed", &["events"]),
        ]);
        assert_eq!(
            waves(&pending),
            vec![
                vec!["browsed".to_string(), "profiles".to_string()],
                vec!["high_value".to_string(), "lapsed".to_string()],
                vec!["high_value_lapsed".to_string()],
            ]
        );
    }

    #[test]
    fn a_cycle_does_not_stall_a_tick() {
        let pending = reads(&[("a", &["b"]), ("b", &["a"]), ("c", &["a"])]);
        assert_eq!(
            waves(&pending),
            vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]
        );
    }
}
