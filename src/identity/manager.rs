//! Named identity graphs: created from SQL, built from their source view, persisted in the
//! storage root, refreshed incrementally, and published as SQL tables.
//!
//! State layout under the storage root, per graph:
//! `identity/<name>/v<version>/<part>.arrow` holds the graph's state at one version (Arrow IPC
//! files: only c360 reads them, and they encode at memory speed), and
//! `identity/<name>/CURRENT` (JSON: definition, version, watermark) names the committed one.
//! A full build writes a new version folder, then replaces CURRENT in one put, then deletes the
//! old folder, so a crash at any point leaves the previous graph readable and intact.
//!
//! A refresh does not rewrite the state: it writes the rows it applied (less repeats, see
//! `log_rows.rs`) as `v<version>/log-<n>.arrow` (Arrow IPC too: a refresh logs while it
//! updates its tables, on a machine of two cores, and Parquet's encodings cost a tenth of a
//! refresh where IPC's cost next to nothing; logs that older versions wrote as `.parquet` are
//! still read), then replaces
//! CURRENT with one that lists that file after the others. A restart loads the snapshot and applies the logged rows again in order, which gives
//! the same graph, because applying is deterministic. Once the log holds a tenth of the
//! graph's records in rows (at least `LOG_ROWS`), the next refresh writes a whole new version
//! instead, after publishing its tables: so replaying the log costs start-up at most about a
//! tenth of loading the snapshot, and the snapshot's cost (seconds at millions of records) is
//! paid once per ten refreshes of 1%, not once per few, and not by queries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::runtime::SpawnedTask;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::graph::{
    ApplySummary, Applying, DEFAULT_HUB_THRESHOLD, FEED_ROWS, IdentityGraph, IdentityRow, Rules,
    identities_schema, merges_schema, records_schema, refused_schema,
};
use super::log_rows::LogRows;
use super::state::{RECORD_KEYS, record_keys_part};
use super::tables::{FirstTables, GraphTables, TableBatches};
use crate::ddl::IdentityGraphDefinition;
use crate::error::{C360Error, Result};
use crate::storage::index::Changes;
use crate::storage::inputs;
use crate::storage::published::PublishedTable;
use crate::storage::{ArrowStream, Storage};

/// The columns a graph's source must have.
pub const SOURCE_COLUMNS: [&str; 4] = ["record_key", "id_type", "id_value", "seen_at"];
const OPTIONS: [&str; 6] = [
    "priority",
    "limits",
    "blocked",
    "hub_threshold",
    LOOKBACK,
    ON_NEW_DATA,
];
/// The option that widens what refreshes read (see [`lookback_micros`]), not what is built.
const LOOKBACK: &str = "lookback";
/// The option that says how soon new source data is refreshed into the graph (see
/// [`new_data_period`]), not what is built.
const ON_NEW_DATA: &str = "on_new_data";
/// How often, by default, a graph's source is checked for new data: a collector lands events
/// all the time, and a refresh each second would spend a core on republishing the tables.
const DEFAULT_NEW_DATA_PERIOD: Duration = Duration::from_secs(10);
const STATE_ROOT: &str = "identity";
/// Rows a graph's log may hold before a refresh writes a whole snapshot instead, however small
/// the graph: replaying them at start-up takes about a second.
const LOG_ROWS: u64 = 1_000_000;

/// What a build or refresh did, for logs and the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshReport {
    pub graph: String,
    pub full_build: bool,
    pub rows_read: u64,
    /// Rows the refresh's log holds: none for a full build, a refresh that changed nothing or
    /// one that wrote a snapshot instead.
    pub rows_logged: u64,
    pub summary: ApplySummary,
    pub profiles: usize,
    pub duration: Duration,
    /// Where the time went, phase by phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

impl RefreshReport {
    /// "read and stitch 1.234 s, tables 0.120 s, …": for logs and benches.
    pub fn phases_text(&self) -> String {
        self.phases
            .iter()
            .map(|(phase, took)| format!("{phase} {:.3} s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One graph as the `identity_graphs` system table shows it: its size now, and how its last
/// build or refresh went.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphStatus {
    pub name: String,
    pub source: String,
    /// `EVERY '…'`, if refreshed on a schedule.
    pub schedule: Option<String>,
    /// How often the source is checked for new data (`10 seconds`), unless `'off'`.
    pub on_new_data: Option<String>,
    pub profiles: u64,
    pub records: u64,
    pub identifiers: u64,
    pub merges: u64,
    pub refused: u64,
    /// Heap the graph holds, its published tables aside.
    pub graph_bytes: u64,
    /// The committed state's version, and the rows logged since it was written.
    pub state_version: u64,
    pub log_rows: u64,
    /// Newest `seen_at` applied (µs since the epoch): the next refresh reads from there.
    pub watermark: Option<i64>,
    /// When the last build or refresh that succeeded ended (µs since the epoch), how long it
    /// took and how many source rows it read.
    pub last_refresh: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_rows_read: Option<u64>,
    /// Why the last attempt failed, until one succeeds.
    pub last_error: Option<String>,
}

/// Times consecutive phases of a build or refresh.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the phase running since the previous mark.
    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Manifest {
    definition: IdentityGraphDefinition,
    version: u64,
    /// Largest `seen_at` applied (µs since the epoch). Rows at the watermark are read again
    /// on the next refresh (applying them twice is a no-op), so records that share the last
    /// timestamp are never skipped.
    watermark: Option<i64>,
    /// Refreshes applied since the snapshot, in order (see the module documentation).
    #[serde(default)]
    log: Vec<LogEntry>,
}

/// One refresh's applied rows, in the version folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogEntry {
    file: String,
    rows: u64,
}

struct Managed {
    definition: IdentityGraphDefinition,
    graph: IdentityGraph,
    version: u64,
    watermark: Option<i64>,
    log: Vec<LogEntry>,
    /// The graph holds rows that neither its state nor its log does: a refresh changed it and
    /// then failed to commit. The next refresh logs every row it reads (repeats included: the
    /// graph's repeats are those very rows) and commits even if it changes nothing.
    uncommitted: bool,
    last_refresh: Instant,
    /// The versions of what the source read when the last build or refresh that succeeded
    /// started (see [`source_version`]): new data shows as a different one.
    source_version: Option<u64>,
    /// When the source was last checked for new data.
    source_checked: Instant,
    /// The graph's tables as last published, updated in place by each refresh.
    outputs: GraphTables,
    tables: [Arc<PublishedTable>; 4],
}

/// Every identity graph of an engine.
pub struct IdentityGraphs {
    storage: Storage,
    graphs: Mutex<BTreeMap<String, Arc<Mutex<Managed>>>>,
    /// Kept apart from the graphs, so that reading them never waits for a refresh.
    statuses: std::sync::Mutex<BTreeMap<String, GraphStatus>>,
    /// The least number of rows a log may hold (`LOG_ROWS`; smaller in tests).
    log_rows: u64,
}

impl IdentityGraphs {
    pub fn new(storage: Storage) -> IdentityGraphs {
        IdentityGraphs {
            storage,
            graphs: Mutex::new(BTreeMap::new()),
            statuses: std::sync::Mutex::new(BTreeMap::new()),
            log_rows: LOG_ROWS,
        }
    }

    /// `CREATE IDENTITY GRAPH`. With `declarative` (a workspace being applied) an identical
    /// definition is kept and refreshed, a changed one rebuilt, as `OR REPLACE` does.
    pub async fn create(
        &self,
        ctx: &SessionContext,
        definition: IdentityGraphDefinition,
        declarative: bool,
    ) -> Result<RefreshReport> {
        let name = definition.name.clone();
        let rules = rules_from_options(&definition)?;
        check_source(ctx, &definition).await?;

        let existing = self.graphs.lock().await.get(&name).cloned();
        if let Some(existing) = existing {
            let mut managed = existing.lock().await;
            let same = same_definition(&managed.definition, &definition);
            if same && (declarative || definition.if_not_exists) {
                drop(managed);
                return self.refresh(ctx, &name).await;
            }
            if !same
                && same_graph(&managed.definition, &definition)
                && (declarative || definition.or_replace)
            {
                // Only when or how far back refreshes read changed: the graph stands, and the
                // next commit records the new definition.
                managed.definition = definition;
                drop(managed);
                return self.refresh(ctx, &name).await;
            }
            drop(managed);
            if !(declarative || definition.or_replace) {
                return Err(C360Error::AlreadyExists(format!("identity graph {name}")));
            }
        }

        // After a restart, continue from the committed state when the definition is the same.
        // State that cannot be loaded (written by an older c360, or damaged) is derived data:
        // the graph is built again from its source, which gives the same profile ids.
        if let Some(manifest) = self.read_manifest(&name).await?
            && same_graph(&manifest.definition, &definition)
        {
            match self
                .load_state(&name, manifest.version, &manifest.log, rules.clone())
                .await
            {
                Ok(graph) => {
                    let committed = Committed {
                        version: manifest.version,
                        watermark: manifest.watermark,
                        log: manifest.log,
                    };
                    self.install(ctx, definition, graph, committed).await?;
                    return self.refresh(ctx, &name).await;
                }
                Err(e) => tracing::warn!(
                    graph = %name,
                    error = %e,
                    "identity graph state cannot be loaded; building the graph again from its source"
                ),
            }
        }

        let started = Instant::now();
        let mut phases = Phases::start();
        let source = source_version(ctx, &definition).await;
        let mut graph = IdentityGraph::new(rules);
        let version = self.next_version(&name).await?;
        let folder = version_folder(&name, version);
        let (rows_read, watermark, summary, written) =
            read_and_apply(ctx, &definition, &mut graph, self.early_state(&folder)).await?;
        phases.mark("read and stitch");
        let (graph, (outputs, batches, _)) = self
            .commit_building_tables(&name, &definition, graph, version, watermark, written)
            .await?;
        phases.mark("state and tables");
        let profiles = graph.profile_count();
        let committed = Committed {
            version,
            watermark,
            log: Vec::new(),
        };
        self.install_built(ctx, definition, graph, committed, outputs, batches)
            .await?;
        phases.mark("publish and index");
        let report = RefreshReport {
            graph: name.clone(),
            full_build: true,
            rows_read,
            rows_logged: 0,
            summary,
            profiles,
            duration: started.elapsed(),
            phases: phases.done,
        };
        let managed = self.managed(&name).await?;
        let mut managed = managed.lock().await;
        managed.source_version = source;
        self.note(&name, &managed, Ok(&report));
        Ok(report)
    }

    /// Every graph's status, by name.
    pub fn statuses(&self) -> Vec<GraphStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Appends each graph's gauges for `GET /metrics`: its size, and its last run, so that
    /// a refresh failing on schedule (which only logs) or a graph gone stale can be alerted on.
    pub fn render_metrics(&self, out: &mut String) {
        type Gauge = (&'static str, &'static str, fn(&GraphStatus) -> f64);
        const GAUGES: [Gauge; 7] = [
            ("c360_identity_profiles", "Profiles in the graph.", |s| {
                s.profiles as f64
            }),
            (
                "c360_identity_records",
                "Source records that carried identifiers.",
                |s| s.records as f64,
            ),
            (
                "c360_identity_graph_bytes",
                "Heap the graph holds, its published tables aside.",
                |s| s.graph_bytes as f64,
            ),
            (
                "c360_identity_log_rows",
                "Rows logged since the graph's last snapshot (replayed at start-up).",
                |s| s.log_rows as f64,
            ),
            (
                "c360_identity_last_success_timestamp_seconds",
                "When the last build or refresh that succeeded ended (Unix time; 0 before one).",
                |s| s.last_refresh.unwrap_or(0) as f64 / 1e6,
            ),
            (
                "c360_identity_last_duration_seconds",
                "How long the last build or refresh that succeeded took.",
                |s| s.last_duration_ms.unwrap_or(0) as f64 / 1e3,
            ),
            (
                "c360_identity_refresh_failing",
                "1 while the graph's last build or refresh failed (see identity_graphs.last_error).",
                |s| f64::from(u8::from(s.last_error.is_some())),
            ),
        ];
        let statuses = self.statuses();
        for (name, help, of) in GAUGES {
            crate::prometheus::labelled(
                out,
                name,
                help,
                "gauge",
                "graph",
                statuses.iter().map(|s| (s.name.clone(), of(s))),
            );
        }
    }

    /// Records how a build or refresh of `name` went, and the graph's size after it.
    fn note(
        &self,
        name: &str,
        managed: &Managed,
        outcome: std::result::Result<&RefreshReport, &C360Error>,
    ) {
        let graph = &managed.graph;
        let mut statuses = self
            .statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = statuses.remove(name);
        let mut status = GraphStatus {
            name: name.to_string(),
            source: managed.definition.source.clone(),
            schedule: managed.definition.every.map(every_text),
            // Checked at create, so a definition here has a valid period.
            on_new_data: new_data_period(&managed.definition)
                .ok()
                .flatten()
                .map(interval_text),
            // A report counted them already; counting is a pass over every profile slot.
            profiles: outcome.map_or_else(|_| graph.profile_count(), |report| report.profiles)
                as u64,
            records: graph.record_count() as u64,
            identifiers: graph.identifier_count() as u64,
            merges: graph.merge_count() as u64,
            refused: graph.refusal_count() as u64,
            graph_bytes: graph.heap_bytes() as u64,
            state_version: managed.version,
            log_rows: managed.log.iter().map(|entry| entry.rows).sum(),
            watermark: managed.watermark,
            last_refresh: before.as_ref().and_then(|b| b.last_refresh),
            last_duration_ms: before.as_ref().and_then(|b| b.last_duration_ms),
            last_rows_read: before.as_ref().and_then(|b| b.last_rows_read),
            last_error: None,
        };
        match outcome {
            Ok(report) => {
                status.last_refresh = Some(chrono::Utc::now().timestamp_micros());
                status.last_duration_ms = Some(report.duration.as_millis() as u64);
                status.last_rows_read = Some(report.rows_read);
            }
            Err(e) => status.last_error = Some(e.to_string()),
        }
        statuses.insert(name.to_string(), status);
    }

    async fn managed(&self, name: &str) -> Result<Arc<Mutex<Managed>>> {
        self.graphs
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| C360Error::NotFound(format!("identity graph {name}")))
    }

    /// `REFRESH IDENTITY GRAPH`: applies the rows seen at or after the watermark.
    pub async fn refresh(&self, ctx: &SessionContext, name: &str) -> Result<RefreshReport> {
        self.run(ctx, name, Run::Refresh).await
    }

    /// A refresh or rebuild of `name`, noted in its status however it ends.
    async fn run(&self, ctx: &SessionContext, name: &str, run: Run) -> Result<RefreshReport> {
        let managed = self.managed(name).await?;
        // Held for the whole run: two runs on one graph never overlap.
        let mut managed = managed.lock().await;
        let ran = match run {
            Run::Refresh => self.refresh_locked(ctx, name, &mut managed).await,
            Run::Rebuild => self.rebuild_locked(ctx, name, &mut managed).await,
        };
        self.note(name, &managed, ran.as_ref());
        ran
    }

    async fn refresh_locked(
        &self,
        ctx: &SessionContext,
        name: &str,
        managed: &mut Managed,
    ) -> Result<RefreshReport> {
        let started = Instant::now();
        let mut phases = Phases::start();
        // Counted from the attempt, so that a failing source is retried once a period.
        managed.last_refresh = started;
        let definition = managed.definition.clone();
        // Taken before reading, so that rows landing during the read make the next check
        // see new data.
        let source = source_version(ctx, &definition).await;
        let watermark = managed.watermark;
        // Rows that landed late, with a `seen_at` the watermark has passed, are read again
        // within the lookback; re-reading rows already applied changes nothing.
        let lookback = lookback_micros(&definition)?;
        let read_from = watermark.map(|at| at.saturating_sub(lookback));
        let logged: u64 = managed.log.iter().map(|entry| entry.rows).sum();
        let (version, log_files) = (managed.version, managed.log.len());
        let limit = log_limit(&managed.graph, self.log_rows);
        let repeats_until = if managed.uncommitted { None } else { watermark };
        let log = LogRows::new(limit.saturating_sub(logged), limit, repeats_until);
        let mut applying = managed.graph.begin_apply();
        let read = read_into(ctx, &definition, &mut applying, read_from, Some(log)).await?;
        let (summary, changed_records) = applying.finish_changed().map_err(graph_error)?;
        phases.mark("read and stitch");
        managed.uncommitted |= summary.records > 0 || summary.refused > 0 || summary.reseen > 0;
        let changed = managed.uncommitted;
        // The rows are logged on another core while this one brings the tables up to date.
        // The file is named by CURRENT only once the refresh commits: a refresh that fails or
        // changes nothing leaves a file that no manifest names, which the next refresh writes
        // over.
        let log_file = match read.kept {
            Some(held) => held.into_logged(&changed_records)?,
            None => None,
        }
        .filter(|(rows, _)| !rows.is_empty())
        .map(|(rows, count)| self.write_log_file(name, version, log_files, rows, count));
        let watermark = read.max_seen.max(watermark);
        let mut rows_logged = 0;
        match log_file {
            Some((entry, log_write)) if changed => {
                let updated = managed.outputs.update(&mut managed.graph);
                phases.mark("tables");
                // Awaited whatever happened to the tables, so that no log write is left
                // running to race the next refresh's.
                let logged = self
                    .commit_log(name, &definition, managed, entry, log_write, watermark)
                    .await;
                phases.mark("state");
                let (batches, changes) = updated.map_err(graph_error)?;
                // Published even when the log failed: `outputs` now describes these tables,
                // and the graph holds the rows either way; the watermark stays put, so the
                // next refresh reads and logs them again (see `uncommitted`).
                publish(&managed.tables, batches, &changes)?;
                phases.mark("publish and index");
                managed.log = logged?.log;
                managed.watermark = watermark;
                managed.uncommitted = false;
                rows_logged = managed.log.last().map_or(0, |entry| entry.rows);
            }
            Some((_, log_write)) => {
                // Nothing changed: the file is not named by any manifest.
                let _ = log_write.await;
            }
            None if changed => {
                // The log is full: a whole snapshot (seconds at millions of records). The
                // tables are published first, so that queries see the rows without waiting
                // for it; if it fails, the watermark stays put and the next refresh reads
                // the rows again, as when a log fails.
                update_and_publish(
                    &mut managed.outputs,
                    &mut managed.graph,
                    &managed.tables,
                    &mut phases,
                )?;
                let version = managed.version + 1;
                self.commit(name, &definition, &managed.graph, version, watermark, &[])
                    .await?;
                managed.version = version;
                managed.log.clear();
                phases.mark("state");
                managed.watermark = watermark;
                managed.uncommitted = false;
            }
            None => {}
        }
        managed.source_version = source;
        Ok(RefreshReport {
            graph: name.to_string(),
            full_build: false,
            rows_read: read.rows,
            rows_logged,
            summary,
            profiles: managed.graph.profile_count(),
            duration: started.elapsed(),
            phases: phases.done,
        })
    }

    /// Builds the graph again from its whole source and commits it as a new version, which
    /// deletes the previous state. `FORGET PROFILE` needs this: the graph never forgets a
    /// value it has seen (an incremental refresh only adds), so once a person's rows are
    /// gone from the source, only a build without them drops their identifiers, records,
    /// merges and refusals. Other people keep their ids: an id is the hash of its founding
    /// identifier, the same in any build.
    pub async fn rebuild(&self, ctx: &SessionContext, name: &str) -> Result<RefreshReport> {
        self.run(ctx, name, Run::Rebuild).await
    }

    async fn rebuild_locked(
        &self,
        ctx: &SessionContext,
        name: &str,
        managed: &mut Managed,
    ) -> Result<RefreshReport> {
        let started = Instant::now();
        let mut phases = Phases::start();
        let definition = managed.definition.clone();
        let source = source_version(ctx, &definition).await;
        let mut graph = IdentityGraph::new(rules_from_options(&definition)?);
        let version = managed.version + 1;
        let folder = version_folder(name, version);
        let (rows_read, watermark, summary, written) =
            read_and_apply(ctx, &definition, &mut graph, self.early_state(&folder)).await?;
        phases.mark("read and stitch");
        let (graph, (outputs, batches, changes)) = self
            .commit_building_tables(name, &definition, graph, version, watermark, written)
            .await?;
        phases.mark("state and tables");
        publish(&managed.tables, batches, &changes)?;
        phases.mark("publish and index");
        managed.outputs = outputs;
        managed.graph = graph;
        managed.version = version;
        managed.watermark = watermark;
        managed.log.clear();
        managed.uncommitted = false;
        managed.last_refresh = started;
        managed.source_version = source;
        Ok(RefreshReport {
            graph: name.to_string(),
            full_build: true,
            rows_read,
            rows_logged: 0,
            summary,
            profiles: managed.graph.profile_count(),
            duration: started.elapsed(),
            phases: phases.done,
        })
    }

    /// `DROP IDENTITY GRAPH`: removes its tables and its state.
    pub async fn drop_graph(
        &self,
        ctx: &SessionContext,
        name: &str,
        if_exists: bool,
    ) -> Result<()> {
        let removed = self.graphs.lock().await.remove(name);
        self.statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name);
        if removed.is_none() && !if_exists {
            return Err(C360Error::NotFound(format!("identity graph {name}")));
        }
        for table in table_names(name) {
            ctx.deregister_table(table.as_str())?;
        }
        self.storage
            .delete_prefix(&format!("{STATE_ROOT}/{name}"))
            .await
    }

    /// The names of the graphs, in order.
    pub async fn names(&self) -> Vec<String> {
        self.graphs.lock().await.keys().cloned().collect()
    }

    /// Graphs due for a refresh: their `EVERY` period has passed since their last refresh, or
    /// new data has reached their source since (rows landed, files added or changed), which
    /// is checked once per `on_new_data` period.
    pub async fn due(&self, ctx: &SessionContext) -> Vec<String> {
        self.due_at(ctx, Instant::now()).await
    }

    async fn due_at(&self, ctx: &SessionContext, now: Instant) -> Vec<String> {
        let graphs: Vec<(String, Arc<Mutex<Managed>>)> = self
            .graphs
            .lock()
            .await
            .iter()
            .map(|(name, managed)| (name.clone(), Arc::clone(managed)))
            .collect();
        let mut due = Vec::new();
        for (name, managed) in graphs {
            // A graph being refreshed is not due: skip it rather than wait for it.
            let Ok(mut managed) = managed.try_lock() else {
                continue;
            };
            let since_refresh = now.saturating_duration_since(managed.last_refresh);
            if managed
                .definition
                .every
                .is_some_and(|every| since_refresh >= every)
            {
                due.push(name);
                continue;
            }
            // Checked at create, so a definition here has a valid period.
            let Ok(Some(period)) = new_data_period(&managed.definition) else {
                continue;
            };
            let last_look = managed.last_refresh.max(managed.source_checked);
            if now.saturating_duration_since(last_look) < period {
                continue;
            }
            managed.source_checked = now;
            let source = source_version(ctx, &managed.definition).await;
            if source.is_some() && source != managed.source_version {
                due.push(name);
            }
        }
        due
    }

    async fn install(
        &self,
        ctx: &SessionContext,
        definition: IdentityGraphDefinition,
        mut graph: IdentityGraph,
        committed: Committed,
    ) -> Result<()> {
        let mut outputs = GraphTables::default();
        let (batches, _) = outputs.update(&mut graph).map_err(graph_error)?;
        self.install_built(ctx, definition, graph, committed, outputs, batches)
            .await
    }

    /// Publishes tables built from `graph` and takes the graph under management.
    async fn install_built(
        &self,
        ctx: &SessionContext,
        definition: IdentityGraphDefinition,
        graph: IdentityGraph,
        committed: Committed,
        outputs: GraphTables,
        [identities, records, merges, refused]: TableBatches,
    ) -> Result<()> {
        let name = definition.name.clone();
        let names = table_names(&name);
        let tables = [
            // Indexed for an app's lookups: the profile of an identifier ("who is this
            // e-mail?") and a profile's identifiers. Records outnumber profiles and are
            // joined in bulk (events and sales to their profiles): their key is indexed for
            // those joins only, by the first join after each publication, so that a join
            // looks up the records it needs instead of hashing all of them every time.
            Arc::new(PublishedTable::indexed(
                identities_schema(),
                identities,
                &["profile_id", "id_value"],
            )?),
            Arc::new(
                PublishedTable::new(records_schema(), records)?.with_join_index(&["record_key"])?,
            ),
            Arc::new(PublishedTable::new(merges_schema(), merges)?),
            Arc::new(PublishedTable::new(refused_schema(), refused)?),
        ];
        for (table_name, table) in names.iter().zip(&tables) {
            ctx.deregister_table(table_name.as_str())?;
            ctx.register_table(table_name.as_str(), Arc::clone(table) as _)?;
        }
        let managed = Managed {
            definition,
            graph,
            version: committed.version,
            watermark: committed.watermark,
            log: committed.log,
            uncommitted: false,
            last_refresh: Instant::now(),
            source_version: None,
            source_checked: Instant::now(),
            outputs,
            tables,
        };
        self.graphs
            .lock()
            .await
            .insert(name, Arc::new(Mutex::new(managed)));
        Ok(())
    }

    async fn read_manifest(&self, name: &str) -> Result<Option<Manifest>> {
        self.storage
            .get_json(&format!("{STATE_ROOT}/{name}/CURRENT"))
            .await
    }

    async fn next_version(&self, name: &str) -> Result<u64> {
        Ok(self
            .read_manifest(name)
            .await?
            .map_or(1, |manifest| manifest.version + 1))
    }

    /// The snapshot of `version`, then the refreshes logged after it, applied again in order.
    async fn load_state(
        &self,
        name: &str,
        version: u64,
        log: &[LogEntry],
        rules: Rules,
    ) -> Result<IdentityGraph> {
        let folder = version_folder(name, version);
        let mut parts = Vec::new();
        for part in super::state::STATE_PARTS {
            let batches = self
                .storage
                .get_arrow(&format!("{folder}/{part}.arrow"))
                .await?;
            parts.push((part.to_string(), batches));
        }
        let mut graph = IdentityGraph::from_state(rules, parts).map_err(graph_error)?;
        for entry in log {
            let path = format!("{folder}/{}", entry.file);
            let logged = if entry.file.ends_with(".parquet") {
                self.storage.get_parquet(&path).await?
            } else {
                self.storage.get_arrow(&path).await?
            };
            let batches = logged
                .iter()
                .map(as_source_batch)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| C360Error::Identity(format!("identity graph {name}: {path}: {e}")))?;
            graph.apply(rows_of(&batches)?).map_err(graph_error)?;
        }
        Ok(graph)
    }

    /// Writes a refresh's applied rows as the next log file (after `log_files`) of `version`,
    /// on a task of its own. Nothing names the file until [`IdentityGraphs::commit_log`].
    fn write_log_file(
        &self,
        name: &str,
        version: u64,
        log_files: usize,
        rows: Vec<RecordBatch>,
        row_count: u64,
    ) -> (LogEntry, tokio::task::JoinHandle<Result<()>>) {
        let entry = LogEntry {
            file: format!("log-{:06}.arrow", log_files + 1),
            rows: row_count,
        };
        let file = format!("{}/{}", version_folder(name, version), entry.file);
        let storage = self.storage.clone();
        let task = tokio::spawn(async move {
            // In the source's own column types: views read from Parquet point into whole
            // pages, which IPC would write out in full.
            let rows = rows
                .iter()
                .map(as_source_batch)
                .collect::<Result<Vec<_>>>()?;
            match rows.first().map(RecordBatch::schema) {
                Some(schema) => {
                    storage
                        .put_arrow_stream(&file, schema, rows.into_iter().map(Ok))
                        .await
                }
                None => Ok(()),
            }
        });
        (entry, task)
    }

    /// Commits a refresh by its log: once the file is written, CURRENT names it. Returns the
    /// manifest committed.
    async fn commit_log(
        &self,
        name: &str,
        definition: &IdentityGraphDefinition,
        managed: &Managed,
        entry: LogEntry,
        log_write: tokio::task::JoinHandle<Result<()>>,
        watermark: Option<i64>,
    ) -> Result<Manifest> {
        log_write.await.map_err(|e| C360Error::Task {
            what: format!("logging a refresh of identity graph {name}"),
            message: e.to_string(),
        })??;
        let mut log = managed.log.clone();
        log.push(entry);
        let manifest = Manifest {
            definition: definition.clone(),
            version: managed.version,
            watermark,
            log,
        };
        self.storage
            .put_json(&format!("{STATE_ROOT}/{name}/CURRENT"), &manifest)
            .await?;
        Ok(manifest)
    }

    /// Writes the state as a new version, then points CURRENT at it, then drops older ones.
    async fn commit(
        &self,
        name: &str,
        definition: &IdentityGraphDefinition,
        graph: &IdentityGraph,
        version: u64,
        watermark: Option<i64>,
        written: &[&str],
    ) -> Result<()> {
        write_state(
            &self.storage,
            &version_folder(name, version),
            graph,
            written,
        )
        .await?;
        self.point_current(name, definition, version, watermark)
            .await
    }

    /// Where a full build into version folder `folder` writes the state parts it can write
    /// while it stitches (see [`read_and_apply`]): on a local root only, whose writes need no
    /// async runtime (the stitch holds the runtime's thread).
    fn early_state<'s>(&'s self, folder: &'s str) -> Option<EarlyState<'s>> {
        self.storage.is_local().then_some(EarlyState {
            storage: &self.storage,
            folder,
        })
    }

    /// Commits a graph built from nothing as `version` and builds its first tables meanwhile,
    /// on a blocking thread: both only read the graph, and at millions of records each takes
    /// seconds, so on two cores the build is shorter by the smaller of the two. The parts
    /// named in `written` are in the version's folder already.
    async fn commit_building_tables(
        &self,
        name: &str,
        definition: &IdentityGraphDefinition,
        graph: IdentityGraph,
        version: u64,
        watermark: Option<i64>,
        written: &[&str],
    ) -> Result<(IdentityGraph, FirstTables)> {
        let graph = Arc::new(graph);
        let started = Instant::now();
        let building = tokio::task::spawn_blocking({
            let graph = Arc::clone(&graph);
            move || {
                let first = GraphTables::first(&graph);
                (first, started.elapsed())
            }
        });
        let committed = self
            .commit(name, definition, &graph, version, watermark, written)
            .await;
        let state_written = started.elapsed();
        let built = building.await.map_err(|e| C360Error::Task {
            what: format!("building the tables of identity graph {name}"),
            message: e.to_string(),
        })?;
        committed?;
        let (first, tables_built) = built;
        tracing::debug!(
            graph = %name,
            state_ms = state_written.as_millis() as u64,
            tables_ms = tables_built.as_millis() as u64,
            "identity state written beside the first tables"
        );
        let first = first.map_err(graph_error)?;
        // The task has returned, so its clone of the graph is gone.
        let mut graph = Arc::into_inner(graph).ok_or_else(|| C360Error::Task {
            what: format!("building the tables of identity graph {name}"),
            message: "the graph is still shared".to_string(),
        })?;
        graph.take_since_tables();
        Ok((graph, first))
    }

    /// The commit point: CURRENT names the written version; older versions are deleted.
    async fn point_current(
        &self,
        name: &str,
        definition: &IdentityGraphDefinition,
        version: u64,
        watermark: Option<i64>,
    ) -> Result<()> {
        let manifest = Manifest {
            definition: definition.clone(),
            version,
            watermark,
            log: Vec::new(),
        };
        self.storage
            .put_json(&format!("{STATE_ROOT}/{name}/CURRENT"), &manifest)
            .await?;
        let current = version_folder_name(version);
        for child in self
            .storage
            .list_children(&format!("{STATE_ROOT}/{name}"))
            .await?
        {
            if child.starts_with('v') && child != current {
                self.storage
                    .delete_prefix(&format!("{STATE_ROOT}/{name}/{child}"))
                    .await?;
            }
        }
        Ok(())
    }
}

/// What [`IdentityGraphs::run`] does to a graph.
enum Run {
    Refresh,
    Rebuild,
}

/// What CURRENT says of a graph's state.
struct Committed {
    version: u64,
    watermark: Option<i64>,
    log: Vec<LogEntry>,
}

/// The first step of a commit: the graph's state, part by part, in `folder`, which nothing
/// points to yet. Each part is written as it is built, so the state never sits in memory
/// twice beside the graph; parts are written on as many threads as there are cores (they only
/// read the graph), the largest first (see [`IdentityGraph::state_parts`]). The parts named
/// in `written` are skipped: a full build wrote them while it stitched.
pub async fn write_state(
    storage: &Storage,
    folder: &str,
    graph: &IdentityGraph,
    written: &[&str],
) -> Result<()> {
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let files = graph
        .state_parts()
        .into_iter()
        .filter(|part| !written.contains(&part.name))
        .map(|part| ArrowStream {
            relative: format!("{folder}/{}.arrow", part.name),
            schema: part.schema,
            batches: Box::new(part.batches.map(|batch| batch.map_err(graph_error))),
        })
        .collect();
    storage.put_arrow_streams(files, writers).await
}

/// A refresh period as `EVERY '…'` reads it, in the largest whole unit.
fn every_text(every: Duration) -> String {
    format!("EVERY '{}'", interval_text(every))
}

/// A period in its largest whole unit: `5 minutes`, `90 seconds`.
fn interval_text(period: Duration) -> String {
    let seconds = period.as_secs();
    let (count, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(unit_seconds, _)| seconds >= *unit_seconds && seconds % unit_seconds == 0)
        .map_or((seconds, "second"), |(unit_seconds, unit)| {
            (seconds / unit_seconds, unit)
        });
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

/// Rows the log of `graph` may hold: a tenth of its records, at least `floor` (see the module
/// documentation).
fn log_limit(graph: &IdentityGraph, floor: u64) -> u64 {
    floor.max(graph.record_count() as u64 / 10)
}

fn version_folder_name(version: u64) -> String {
    format!("v{version:010}")
}

fn version_folder(name: &str, version: u64) -> String {
    format!("{STATE_ROOT}/{name}/{}", version_folder_name(version))
}

/// `<name>_identities`, `<name>_records`, `<name>_merges`, `<name>_refused`.
pub fn table_names(name: &str) -> [String; 4] {
    ["identities", "records", "merges", "refused"].map(|suffix| format!("{name}_{suffix}"))
}

/// Brings `outputs` up to date with `graph` and publishes them.
fn update_and_publish(
    outputs: &mut GraphTables,
    graph: &mut IdentityGraph,
    tables: &[Arc<PublishedTable>; 4],
    phases: &mut Phases,
) -> Result<()> {
    let (batches, changes) = outputs.update(graph).map_err(graph_error)?;
    phases.mark("tables");
    publish(tables, batches, &changes)?;
    phases.mark("publish and index");
    Ok(())
}

/// Swaps each table's new batches in, carrying its indexes over `changes`.
fn publish(
    tables: &[Arc<PublishedTable>; 4],
    batches: TableBatches,
    changes: &[Changes; 4],
) -> Result<()> {
    for ((table, batches), changes) in tables.iter().zip(batches).zip(changes) {
        table.publish_changed(batches, changes)?;
    }
    Ok(())
}

fn same_definition(a: &IdentityGraphDefinition, b: &IdentityGraphDefinition) -> bool {
    a.name == b.name && a.source == b.source && a.options == b.options && a.every == b.every
}

/// Whether two definitions build the same graph: they may differ in when (`EVERY`,
/// `on_new_data`) and how far back (`lookback`) refreshes read, which change nothing already
/// built.
fn same_graph(a: &IdentityGraphDefinition, b: &IdentityGraphDefinition) -> bool {
    let shaping = |definition: &IdentityGraphDefinition| {
        definition
            .options
            .iter()
            .filter(|(option, _)| ![LOOKBACK, ON_NEW_DATA].contains(&option.as_str()))
            .map(|(option, value)| (option.clone(), value.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    a.name == b.name && a.source == b.source && shaping(a) == shaping(b)
}

fn graph_error(e: super::graph::GraphError) -> C360Error {
    C360Error::Identity(e.to_string())
}

/// Validates `WITH (…)` into [`Rules`], naming the option at fault.
pub fn rules_from_options(definition: &IdentityGraphDefinition) -> Result<Rules> {
    let name = &definition.name;
    let invalid =
        |message: String| C360Error::Identity(format!("identity graph {name}: {message}"));
    for option in definition.options.keys() {
        if !OPTIONS.contains(&option.as_str()) {
            return Err(invalid(format!(
                "unknown option {option} (known: {})",
                OPTIONS.join(", ")
            )));
        }
    }
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let priority = definition
        .options
        .get("priority")
        .map(|text| list(text))
        .ok_or_else(|| {
            invalid(
                "the priority option is required, e.g. priority = 'user_id, email, phone'".into(),
            )
        })?;
    let mut limits = HashMap::new();
    if let Some(text) = definition.options.get("limits") {
        for item in list(text) {
            let (id_type, number) = item
                .split_once(':')
                .ok_or_else(|| invalid(format!("limits: expected 'type: number', got '{item}'")))?;
            let limit: u32 = number.trim().parse().map_err(|_| {
                invalid(format!(
                    "limits: '{}' is not a whole number (in '{item}')",
                    number.trim()
                ))
            })?;
            limits.insert(id_type.trim().to_string(), limit);
        }
    }
    let blocked = definition
        .options
        .get("blocked")
        .map(|pattern| vec![pattern.clone()])
        .unwrap_or_default();
    let hub_threshold = match definition.options.get("hub_threshold") {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| invalid(format!("hub_threshold: '{text}' is not a whole number")))?,
        None => DEFAULT_HUB_THRESHOLD,
    };
    lookback_micros(definition)?;
    new_data_period(definition)?;
    Rules::new(priority, limits, blocked, hub_threshold).map_err(|e| invalid(e.to_string()))
}

/// The `lookback` option in µs, 0 when not set: how far before the watermark a refresh reads.
/// Sources rarely land in `seen_at` order (a till that uploads at night, a CRM export of last
/// week's contacts), and a refresh that read only from the watermark on would leave such rows
/// to the next rebuild.
pub fn lookback_micros(definition: &IdentityGraphDefinition) -> Result<i64> {
    let Some(text) = definition.options.get(LOOKBACK) else {
        return Ok(0);
    };
    let interval = crate::ddl::parse_interval(text).map_err(|e| {
        C360Error::Identity(format!(
            "identity graph {}: lookback: {}",
            definition.name, e.0
        ))
    })?;
    Ok(i64::try_from(interval.as_micros()).unwrap_or(i64::MAX))
}

/// The `on_new_data` option: how often the source is checked for data that arrived since the
/// last refresh, which then runs at once; `None` for `'off'` (refreshes then wait for `EVERY`
/// or `REFRESH`). Ten seconds when not set.
pub fn new_data_period(definition: &IdentityGraphDefinition) -> Result<Option<Duration>> {
    let Some(text) = definition.options.get(ON_NEW_DATA) else {
        return Ok(Some(DEFAULT_NEW_DATA_PERIOD));
    };
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    crate::ddl::parse_interval(text).map(Some).map_err(|e| {
        C360Error::Identity(format!(
            "identity graph {}: on_new_data: {} (or 'off')",
            definition.name, e.0
        ))
    })
}

/// The versions of everything the graph's source reads (see [`inputs::fingerprint`]), the
/// graph's own tables aside, or `None` when some of it has no version to compare (an
/// in-memory table, a view calling `now()`) or the source cannot be planned: such a graph
/// refreshes on `EVERY` and `REFRESH` only. A source that fails to plan fails its refresh,
/// which reports it; here it only means "no new data seen".
async fn source_version(ctx: &SessionContext, definition: &IdentityGraphDefinition) -> Option<u64> {
    let frame = ctx.table(definition.source.as_str()).await.ok()?;
    let mut reads = inputs::inputs_of(frame.logical_plan()).ok()?;
    for own in table_names(&definition.name) {
        reads.tables.remove(&own);
    }
    inputs::fingerprint(ctx, &reads).await.ok().flatten()
}

/// Checks at `CREATE` time that the source exists and has the four columns, with types that
/// can be read as text and a timestamp.
async fn check_source(ctx: &SessionContext, definition: &IdentityGraphDefinition) -> Result<()> {
    let name = &definition.name;
    let source = &definition.source;
    let frame = ctx
        .table(source.as_str())
        .await
        .map_err(|e| C360Error::Identity(format!("identity graph {name}: source {source}: {e}")))?;
    let schema = frame.schema();
    let present: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for column in SOURCE_COLUMNS {
        let Some(field) = schema.fields().iter().find(|f| f.name() == column) else {
            return Err(C360Error::Identity(format!(
                "identity graph {name}: source {source} has no column {column} (it has: {}); it needs {}",
                present.join(", "),
                SOURCE_COLUMNS.join(", ")
            )));
        };
        let data_type = field.data_type();
        let fits = if column == "seen_at" {
            matches!(
                data_type,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            )
        } else {
            matches!(
                data_type,
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            ) || data_type.is_integer()
        };
        if !fits {
            let wanted = if column == "seen_at" {
                "a timestamp"
            } else {
                "text"
            };
            return Err(C360Error::Identity(format!(
                "identity graph {name}: column {column} of {source} is {data_type}, it must be {wanted}"
            )));
        }
    }
    Ok(())
}

/// Where a full build writes state early: a local root, and the new version's folder.
struct EarlyState<'s> {
    storage: &'s Storage,
    folder: &'s str,
}

/// Reads the whole source and applies it to `graph`. Returns the rows read, the largest
/// `seen_at` read, what the graph did, and the state parts written to `early` meanwhile:
/// the record keys, which the stitch no longer changes, are written while it runs (the
/// stitch keeps one core busy, and at a million customers they were half the state's time).
async fn read_and_apply(
    ctx: &SessionContext,
    definition: &IdentityGraphDefinition,
    graph: &mut IdentityGraph,
    early: Option<EarlyState<'_>>,
) -> Result<(u64, Option<i64>, ApplySummary, &'static [&'static str])> {
    let mut applying = graph.begin_apply();
    let read = read_into(ctx, definition, &mut applying, None, None).await?;
    let Some(early) = early else {
        let summary = applying.finish().map_err(graph_error)?;
        return Ok((read.rows, read.max_seen, summary, &[]));
    };
    let (stitched, keys_written) = applying.finish_beside(|records| {
        let part = record_keys_part(records);
        let relative = format!("{}/{}.arrow", early.folder, part.name);
        let batches = part.batches.map(|batch| batch.map_err(graph_error));
        early
            .storage
            .put_arrow_stream_here(&relative, &part.schema, batches)
    });
    let summary = stitched.map_err(graph_error)?;
    let written: &[&str] = match keys_written.flatten() {
        Some(Ok(())) => &[RECORD_KEYS],
        Some(Err(e)) => return Err(e),
        None => &[],
    };
    Ok((read.rows, read.max_seen, summary, written))
}

/// What [`read_into`] read.
struct SourceRead {
    rows: u64,
    /// The largest `seen_at` read.
    max_seen: Option<i64>,
    /// The rows held for the log, unless it was full.
    kept: Option<LogRows>,
}

/// Reads the source (rows at or after `watermark`, or all) into a batch being applied, holding
/// them in `log` while they fit; the caller stitches them with [`Applying::finish`].
async fn read_into(
    ctx: &SessionContext,
    definition: &IdentityGraphDefinition,
    applying: &mut Applying<'_>,
    watermark: Option<i64>,
    mut log: Option<LogRows>,
) -> Result<SourceRead> {
    let mut frame = source_frame(ctx, &definition.source).await?;
    if let Some(watermark) = watermark {
        frame = frame.filter(col("seen_at").gt_eq(lit(ScalarValue::TimestampMicrosecond(
            Some(watermark),
            None,
        ))))?;
    }
    // Batches are interned a group at a time as they arrive and then dropped, so the source is
    // never held whole. Reader tasks (see `read_ahead`) fill up to two groups ahead: a feed
    // keeps both cores busy only while the record and value sides have equal work, and the
    // core that waits for the other reads meanwhile. DataFusion alone buffers a batch or two per
    // partition, and a source of few partitions (a landed table) then left a core idle for a
    // fifth of the load.
    let mut batches = read_ahead(
        frame.execute_stream_partitioned().await?,
        READ_AHEAD_BATCHES,
    );
    let (mut waited, mut fed) = (Duration::ZERO, Duration::ZERO);
    let mut rows_read = 0u64;
    let mut max_seen: Option<i64> = None;
    // A group is `FEED_ROWS` rows: each feed waits for both cores.
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    loop {
        let asked = Instant::now();
        let next = batches.recv().await.transpose()?;
        waited += asked.elapsed();
        if let Some(batch) = next.as_ref() {
            pending_rows += batch.num_rows();
            pending.push(batch.clone());
        }
        if pending_rows >= FEED_ROWS || (next.is_none() && !pending.is_empty()) {
            // What the log needs of a row is asked before the row is fed (see `LogNeed`).
            if let Some(held) = log.as_mut() {
                for batch in &pending {
                    if !held.hold(applying, batch)? {
                        log = None;
                        break;
                    }
                }
            }
            let rows = rows_of(&pending)?.inspect(|row| {
                rows_read += 1;
                max_seen = Some(max_seen.map_or(row.seen_at, |m| m.max(row.seen_at)));
            });
            let feeding = Instant::now();
            applying.feed(rows).map_err(graph_error)?;
            fed += feeding.elapsed();
            pending.clear();
            pending_rows = 0;
        }
        if next.is_none() {
            break;
        }
    }
    tracing::debug!(
        source = %definition.source,
        rows = rows_read,
        waited_ms = waited.as_millis() as u64,
        fed_ms = fed.as_millis() as u64,
        heap_mb = applying.heap_bytes() >> 20,
        "identity source read"
    );
    Ok(SourceRead {
        rows: rows_read,
        max_seen,
        kept: log,
    })
}

/// Source batches read ahead: two feeds' worth of DataFusion's usual 8192-row batches.
const READ_AHEAD_BATCHES: usize = 2 * FEED_ROWS / 8192;

/// Drives the source's partitions into a channel of `capacity` batches, one partition at a
/// time on each of as many tasks as there are cores. The tasks stop when the receiver is
/// dropped, and are aborted with it (`SpawnedTask`).
///
/// Why not all partitions at once: a source is typically a view that is a `UNION ALL` of a
/// branch per source and identifier column, two dozen partitions. Polled all together, each
/// holds a row group's pages and a batch ready; reading the demo's view at 1M customers then
/// peaked near 1 GB for what streams through a few megabytes, and on a machine where memory
/// touched for the first time costs a second a gigabyte, that was time too. Partitions next
/// to each other are read together, so the partitions of one branch (which may share a
/// repartition) drain alike.
fn read_ahead(streams: Vec<SendableRecordBatchStream>, capacity: usize) -> ReadAhead {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(streams.len())
        .max(1);
    let queue = Arc::new(std::sync::Mutex::new(streams.into_iter()));
    let tasks = (0..readers)
        .map(|_| {
            let (queue, sender) = (Arc::clone(&queue), sender.clone());
            SpawnedTask::spawn(async move {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .next();
                    let Some(mut stream) = next else { return };
                    while let Some(batch) = stream.next().await {
                        if sender.send(batch).await.is_err() {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    ReadAhead {
        receiver,
        _tasks: tasks,
    }
}

/// The receiving end of [`read_ahead`].
struct ReadAhead {
    receiver: tokio::sync::mpsc::Receiver<datafusion::error::Result<RecordBatch>>,
    _tasks: Vec<SpawnedTask<()>>,
}

impl ReadAhead {
    async fn recv(&mut self) -> Option<datafusion::error::Result<RecordBatch>> {
        self.receiver.recv().await
    }
}

/// A graph's source as the stitch reads it: the three key columns as text (strings as they
/// come, since copying 20M strings into another representation costs seconds; other types
/// cast), `seen_at` in µs.
pub async fn source_frame(ctx: &SessionContext, source: &str) -> Result<DataFrame> {
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let frame = ctx.table(source).await?;
    let text = |name: &str| {
        let is_text = frame
            .schema()
            .field_with_unqualified_name(name)
            .is_ok_and(|field| TextColumn::readable(field.data_type()));
        if is_text {
            col(name)
        } else {
            cast(col(name), DataType::Utf8).alias(name)
        }
    };
    let columns = vec![
        text("record_key"),
        text("id_type"),
        text("id_value"),
        cast(col("seen_at"), micros).alias("seen_at"),
    ];
    Ok(frame.select(columns)?)
}

/// A text column in any of Arrow's string layouts.
enum TextColumn<'a> {
    Utf8(&'a datafusion::arrow::array::StringArray),
    Large(&'a datafusion::arrow::array::LargeStringArray),
    View(&'a datafusion::arrow::array::StringViewArray),
}

impl<'a> TextColumn<'a> {
    fn readable(data_type: &DataType) -> bool {
        matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    }

    fn of(array: &'a dyn Array) -> Option<TextColumn<'a>> {
        Some(match array.data_type() {
            DataType::Utf8 => TextColumn::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => TextColumn::Large(array.as_string::<i64>()),
            DataType::Utf8View => TextColumn::View(array.as_string_view()),
            _ => return None,
        })
    }

    /// The value at `i`, `""` for NULL.
    fn text(&self, i: usize) -> &'a str {
        match self {
            TextColumn::Utf8(a) if a.is_valid(i) => a.value(i),
            TextColumn::Large(a) if a.is_valid(i) => a.value(i),
            TextColumn::View(a) if a.is_valid(i) => a.value(i),
            _ => "",
        }
    }
}

/// A batch read back from a log file, with the column types of [`source_frame`] (a Parquet
/// reader may return other string representations).
fn as_source_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let wanted = [DataType::Utf8, DataType::Utf8, DataType::Utf8, micros];
    if batch.num_columns() != wanted.len() {
        return Err(C360Error::Identity(format!(
            "a log file has {} columns, expected {}",
            batch.num_columns(),
            SOURCE_COLUMNS.join(", ")
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(&wanted)
        .map(|(column, data_type)| datafusion::arrow::compute::cast(column, data_type))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| C360Error::arrow("a log file's columns", e))?;
    let fields: Vec<_> = SOURCE_COLUMNS
        .iter()
        .zip(&wanted)
        .map(|(name, data_type)| {
            datafusion::arrow::datatypes::Field::new(*name, data_type.clone(), true)
        })
        .collect();
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(|e| C360Error::arrow("a log file", e))
}

/// The rows of batches from [`source_frame`]. A row without a record or a time cannot be
/// placed: it is noise, like an empty value, and is left out.
pub fn rows_of(batches: &[RecordBatch]) -> Result<impl Iterator<Item = IdentityRow<'_>>> {
    let rows = batches
        .iter()
        .map(rows_of_batch)
        .collect::<Result<Vec<_>>>()?;
    Ok(rows.into_iter().flatten())
}

/// The rows of one batch from [`source_frame`] (see [`rows_of`]); an error if its columns are
/// not the source's (text, text, text, timestamp in µs).
pub fn rows_of_batch(batch: &RecordBatch) -> Result<impl Iterator<Item = IdentityRow<'_>>> {
    Ok(indexed_rows_of_batch(batch)?.map(|(_, row)| row))
}

/// [`rows_of_batch`], each row with its index in the batch.
pub(super) fn indexed_rows_of_batch(
    batch: &RecordBatch,
) -> Result<impl Iterator<Item = (usize, IdentityRow<'_>)>> {
    let mismatch = || {
        let types: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|field| field.data_type().to_string())
            .collect();
        C360Error::Identity(format!(
            "identity rows must be (text, text, text, timestamp(µs)), got ({})",
            types.join(", ")
        ))
    };
    if batch.num_columns() != 4 {
        return Err(mismatch());
    }
    let text = |i: usize| TextColumn::of(batch.column(i).as_ref()).ok_or_else(mismatch);
    let (keys, types, values) = (text(0)?, text(1)?, text(2)?);
    let seen = batch
        .column(3)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(mismatch)?;
    let key_nulls = batch.column(0).logical_nulls();
    Ok((0..batch.num_rows()).filter_map(move |i| {
        if key_nulls.as_ref().is_some_and(|nulls| nulls.is_null(i)) || seen.is_null(i) {
            return None;
        }
        Some((
            i,
            IdentityRow {
                record_key: keys.text(i),
                id_type: types.text(i),
                id_value: values.text(i),
                seen_at: seen.value(i),
            },
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
    use datafusion::datasource::MemTable;

    /// Registers `ids` as the graph's source: `(record_key, id_type, id_value, seen_at)`.
    fn set_source(ctx: &SessionContext, rows: &[(&str, &str, &str, i64)]) {
        set_source_in_batches(ctx, rows, rows.len().max(1));
    }

    /// [`set_source`] as batches of `batch_rows` rows, in order, as a scan returns them.
    fn set_source_in_batches(
        ctx: &SessionContext,
        rows: &[(&str, &str, &str, i64)],
        batch_rows: usize,
    ) {
        let table =
            MemTable::try_new(source_schema(), vec![source_batches(rows, batch_rows)]).unwrap();
        ctx.deregister_table("ids").unwrap();
        ctx.register_table("ids", Arc::new(table)).unwrap();
    }

    /// Makes the source a published table holding `rows`: a table with versions, as landed
    /// and c360-built tables are, so that new rows in it show as new data.
    fn publish_source(
        ctx: &SessionContext,
        rows: &[(&str, &str, &str, i64)],
    ) -> Arc<PublishedTable> {
        let table =
            Arc::new(PublishedTable::new(source_schema(), source_batches(rows, 1024)).unwrap());
        ctx.deregister_table("ids").unwrap();
        ctx.register_table("ids", Arc::clone(&table) as _).unwrap();
        table
    }

    fn source_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("record_key", DataType::Utf8, false),
            Field::new("id_type", DataType::Utf8, false),
            Field::new("id_value", DataType::Utf8, false),
            Field::new(
                "seen_at",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]))
    }

    /// `rows` as batches of `batch_rows` rows of [`source_schema`].
    fn source_batches(rows: &[(&str, &str, &str, i64)], batch_rows: usize) -> Vec<RecordBatch> {
        let batch = |rows: &[(&str, &str, &str, i64)]| {
            let column = |i: usize| -> Vec<&str> {
                rows.iter().map(|row| [row.0, row.1, row.2][i]).collect()
            };
            RecordBatch::try_new(
                source_schema(),
                vec![
                    Arc::new(StringArray::from(column(0))),
                    Arc::new(StringArray::from(column(1))),
                    Arc::new(StringArray::from(column(2))),
                    Arc::new(TimestampMicrosecondArray::from(
                        rows.iter().map(|row| row.3).collect::<Vec<_>>(),
                    )),
                ],
            )
            .unwrap()
        };
        rows.chunks(batch_rows).map(batch).collect()
    }

    fn definition() -> IdentityGraphDefinition {
        IdentityGraphDefinition {
            name: "g".into(),
            source: "ids".into(),
            options: [
                (
                    "priority".to_string(),
                    "user_id, email, anonymous_id".to_string(),
                ),
                ("limits".to_string(), "user_id: 1".to_string()),
            ]
            .into(),
            every: None,
            or_replace: false,
            if_not_exists: false,
        }
    }

    async fn table(ctx: &SessionContext, name: &str) -> Vec<String> {
        let batches = ctx
            .sql(&format!("SELECT * FROM {name}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        text.lines().map(str::to_string).collect()
    }

    /// A new storage root (its folder lives as long as the `TempDir`), its location, and a
    /// context whose source holds `FIRST_ROWS`.
    /// [`definition`] with a lookback of a minute.
    fn looking_back_a_minute() -> IdentityGraphDefinition {
        let mut definition = definition();
        definition
            .options
            .insert("lookback".into(), "1 minute".into());
        definition
    }

    /// A fresh root with graph `g` built on `FIRST_ROWS`, its refreshes reading a minute back.
    struct LookingBack {
        /// Holds the root's directory for the test's life.
        _dir: tempfile::TempDir,
        location: String,
        storage: Storage,
        ctx: SessionContext,
        graphs: IdentityGraphs,
    }

    async fn built_looking_back_a_minute() -> LookingBack {
        let (dir, location, storage, ctx) = fresh_root().await;
        let graphs = IdentityGraphs::new(storage.clone());
        graphs
            .create(&ctx, looking_back_a_minute(), false)
            .await
            .unwrap();
        LookingBack {
            _dir: dir,
            location,
            storage,
            ctx,
            graphs,
        }
    }

    async fn fresh_root() -> (tempfile::TempDir, String, Storage, SessionContext) {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap().to_string();
        let storage = Storage::open(&location, &Default::default()).await.unwrap();
        let ctx = SessionContext::new();
        set_source(&ctx, &FIRST_ROWS);
        (dir, location, storage, ctx)
    }

    /// The graph `g`'s four tables, in `table_names` order.
    async fn tables(ctx: &SessionContext) -> Vec<Vec<String>> {
        let mut tables = Vec::new();
        for name in table_names("g") {
            tables.push(table(ctx, &name).await);
        }
        tables
    }

    /// A new engine on the storage root at `location`, over `rows`: what creating `g` there
    /// did, and its tables.
    async fn restarted(
        location: &str,
        rows: &[(&str, &str, &str, i64)],
    ) -> (RefreshReport, Vec<Vec<String>>) {
        let ctx = SessionContext::new();
        set_source(&ctx, rows);
        let graphs =
            IdentityGraphs::new(Storage::open(location, &Default::default()).await.unwrap());
        let report = graphs.create(&ctx, definition(), true).await.unwrap();
        (report, tables(&ctx).await)
    }

    /// A person's web session and CRM contact, linked by their user id.
    const FIRST_ROWS: [(&str, &str, &str, i64); 4] = [
        ("w1", "anonymous_id", "d1", 10),
        ("w1", "user_id", "u1", 10),
        ("c1", "email", "a@x.com", 20),
        ("c1", "user_id", "u1", 20),
    ];

    /// What `identity_graphs` shows: the graph's counts after each run, a failed refresh's
    /// error (the graph and its last success kept) until a refresh succeeds, nothing once
    /// dropped.
    #[tokio::test]
    async fn statuses_follow_builds_failures_and_drops() {
        let (_dir, _, storage, ctx) = fresh_root().await;
        let graphs = IdentityGraphs::new(storage.clone());
        let mut definition = definition();
        definition.every = Some(Duration::from_secs(300));
        let built = graphs.create(&ctx, definition, false).await.unwrap();
        let [status] = graphs.statuses().try_into().unwrap();
        assert_eq!((status.name.as_str(), status.source.as_str()), ("g", "ids"));
        assert_eq!(status.schedule.as_deref(), Some("EVERY '5 minutes'"));
        assert_eq!(status.on_new_data.as_deref(), Some("10 seconds"));
        // w1 and c1 share u1: one profile of two records and three identifiers.
        assert_eq!(
            (status.profiles, status.records, status.identifiers),
            (1, 2, 3)
        );
        assert_eq!((status.merges, status.refused, status.log_rows), (0, 0, 0));
        assert_eq!(status.watermark, Some(20));
        assert_eq!(status.last_rows_read, Some(built.rows_read));
        assert!(status.last_refresh.is_some() && status.graph_bytes > 0);
        assert_eq!(status.last_error, None);

        ctx.deregister_table("ids").unwrap();
        let failed = graphs.refresh(&ctx, "g").await.unwrap_err().to_string();
        let [after_failure] = graphs.statuses().try_into().unwrap();
        assert_eq!(after_failure.last_error.as_deref(), Some(failed.as_str()));
        assert_eq!(
            (after_failure.profiles, after_failure.last_refresh),
            (1, status.last_refresh)
        );

        let mut rows = FIRST_ROWS.to_vec();
        rows.push(("w2", "anonymous_id", "d2", 30));
        set_source(&ctx, &rows);
        graphs.refresh(&ctx, "g").await.unwrap();
        let [recovered] = graphs.statuses().try_into().unwrap();
        assert_eq!(recovered.last_error, None);
        assert_eq!((recovered.profiles, recovered.records), (2, 3));
        assert_eq!((recovered.log_rows, recovered.watermark), (1, Some(30)));

        graphs.drop_graph(&ctx, "g", false).await.unwrap();
        assert!(graphs.statuses().is_empty());
    }

    #[test]
    fn schedules_read_in_their_largest_whole_unit() {
        let text = |seconds| every_text(Duration::from_secs(seconds));
        assert_eq!(text(300), "EVERY '5 minutes'");
        assert_eq!(text(90), "EVERY '90 seconds'");
        assert_eq!(text(3_600), "EVERY '1 hour'");
        assert_eq!(text(172_800), "EVERY '2 days'");
        assert_eq!(text(1), "EVERY '1 second'");
    }

    #[tokio::test]
    async fn state_that_cannot_be_loaded_is_built_again_from_the_source() {
        let (_dir, _, storage, ctx) = fresh_root().await;
        let rows = FIRST_ROWS.to_vec();
        let graphs = IdentityGraphs::new(storage.clone());
        graphs.create(&ctx, definition(), false).await.unwrap();
        let before = tables(&ctx).await;
        // As if written by another version: a part that does not decode.
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        let part = format!("{}/values.arrow", version_folder("g", manifest.version));
        storage.put(&part, b"not arrow".to_vec()).await.unwrap();

        drop(graphs);
        let restarted = SessionContext::new();
        set_source(&restarted, &rows);
        let again = IdentityGraphs::new(storage);
        let report = again.create(&restarted, definition(), true).await.unwrap();
        assert!(report.full_build, "built again, not loaded");
        assert_eq!(tables(&restarted).await, before);
        let rebuilt = again.read_manifest("g").await.unwrap().unwrap();
        assert!(rebuilt.version > manifest.version, "and committed anew");
    }

    /// A source of more than `FEED_ROWS` rows is fed in groups of batches: a record whose rows
    /// fall in different groups is still one record, and the graph is the one a single
    /// `apply` of every row builds.
    #[tokio::test]
    async fn a_source_fed_in_groups_builds_what_one_apply_does() {
        let (_dir, _, storage, ctx) = fresh_root().await;
        let records = FEED_ROWS / 2 + 5000;
        let mut owned: Vec<(String, String, String, i64)> = Vec::new();
        for i in 0..records {
            // Three records per device, two devices per account.
            let key = format!("w{i}");
            owned.push((
                key.clone(),
                "anonymous_id".into(),
                format!("d{}", i / 3),
                i as i64,
            ));
            owned.push((key, "user_id".into(), format!("u{}", i / 6), i as i64));
        }
        // The first record again, in the last group, with an e-mail.
        owned.push((
            "w0".into(),
            "email".into(),
            "late@x.com".into(),
            records as i64,
        ));
        let rows: Vec<(&str, &str, &str, i64)> = owned
            .iter()
            .map(|(key, id_type, value, at)| (key.as_str(), id_type.as_str(), value.as_str(), *at))
            .collect();
        assert!(rows.len() > FEED_ROWS, "more than one group");
        set_source_in_batches(&ctx, &rows, 8192);
        let report = IdentityGraphs::new(storage)
            .create(&ctx, definition(), false)
            .await
            .unwrap();

        let mut graph = IdentityGraph::new(rules_from_options(&definition()).unwrap());
        let applied = graph
            .apply(
                rows.iter()
                    .map(|&(record_key, id_type, id_value, seen_at)| IdentityRow {
                        record_key,
                        id_type,
                        id_value,
                        seen_at,
                    }),
            )
            .unwrap();
        assert_eq!(report.summary, applied);
        assert_eq!(report.profiles, graph.profile_count());
        assert_eq!(report.profiles, records.div_ceil(6), "one per account");
        assert_eq!(report.summary.records as usize, records, "w0 is one record");
        let late_on_w0 = ctx
            .sql(
                "SELECT count(*) FROM g_identities i JOIN g_records r \
                 ON i.profile_id = r.profile_id \
                 WHERE i.id_value = 'late@x.com' AND r.record_key = 'w0'",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let count = late_on_w0[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(count, 1, "the late e-mail joined w0's profile");
    }

    /// A row that lands after the watermark passed its `seen_at` is applied by a refresh
    /// within the graph's lookback, and left for a rebuild when older or without one.
    #[tokio::test]
    async fn a_refresh_applies_late_rows_within_the_lookback() {
        let LookingBack {
            _dir, ctx, graphs, ..
        } = built_looking_back_a_minute().await;
        let mut without = definition();
        without.name = "h".into();
        graphs.create(&ctx, without, false).await.unwrap();

        let mut rows = FIRST_ROWS.to_vec();
        let newest = rows.iter().map(|row| row.3).max().unwrap_or(0);
        let second = 1_000_000;
        rows.extend([
            ("late", "anonymous_id", "d-late", newest - 30 * second),
            ("stale", "anonymous_id", "d-stale", newest - 120 * second),
        ]);
        set_source(&ctx, &rows);
        let looked_back = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(
            looked_back.summary.records, 1,
            "only the row within a minute"
        );
        let records = table(&ctx, "g_records").await;
        assert!(
            records.iter().any(|row| row.contains("| late ")),
            "{records:?}"
        );
        assert!(
            !records.iter().any(|row| row.contains("stale")),
            "{records:?}"
        );

        let from_watermark = graphs.refresh(&ctx, "h").await.unwrap();
        assert_eq!(from_watermark.summary.records, 0);
        let records = table(&ctx, "h_records").await;
        assert!(
            !records.iter().any(|row| row.contains("late")),
            "{records:?}"
        );
    }

    /// A definition that changes only its period and lookback keeps the graph built, in
    /// memory and after a restart, and its refresh reads with the new lookback.
    #[tokio::test]
    async fn a_new_period_or_lookback_keeps_the_graph() {
        let (_dir, location, storage, ctx) = fresh_root().await;
        let graphs = IdentityGraphs::new(storage);
        graphs.create(&ctx, definition(), false).await.unwrap();
        let mut rows = FIRST_ROWS.to_vec();
        let newest = rows.iter().map(|row| row.3).max().unwrap_or(0);
        rows.push(("late", "anonymous_id", "d-late", newest - 30_000_000));
        set_source(&ctx, &rows);

        let mut changed = looking_back_a_minute();
        changed.every = Some(Duration::from_secs(600));
        changed.or_replace = true;
        let report = graphs.create(&ctx, changed, false).await.unwrap();
        assert!(!report.full_build, "the graph stands");
        assert_eq!(report.summary.records, 1, "its refresh read a minute back");
        let managed = graphs.managed("g").await.unwrap();
        assert_eq!(
            managed.lock().await.definition.every,
            Some(Duration::from_secs(600))
        );
        drop(graphs);

        // Back to no lookback and no period, after a restart: the state is loaded, not
        // built again.
        let (report, after) = restarted(&location, &rows).await;
        assert!(!report.full_build);
        assert!(
            after[1].iter().any(|row| row.contains("| late ")),
            "{after:?}"
        );
    }

    /// Rows landing in a source with versions make the graph due within `on_new_data`, with
    /// no `EVERY`; once refreshed, it is not due again until more rows land.
    #[tokio::test]
    async fn new_data_in_the_source_makes_the_graph_due() {
        let (_dir, _location, storage, ctx) = fresh_root().await;
        let source = publish_source(&ctx, &FIRST_ROWS);
        let graphs = IdentityGraphs::new(storage);
        graphs.create(&ctx, definition(), false).await.unwrap();
        let start = Instant::now();
        let period = DEFAULT_NEW_DATA_PERIOD;
        assert!(graphs.due_at(&ctx, start + period).await.is_empty());

        let mut rows = FIRST_ROWS.to_vec();
        rows.push(("c2", "email", "b@x.com", 30));
        source.publish(source_batches(&rows, 1024)).unwrap();
        assert!(
            graphs
                .due_at(&ctx, start + period + period / 2)
                .await
                .is_empty(),
            "the source is looked at once per period"
        );
        assert_eq!(graphs.due_at(&ctx, start + 2 * period).await, ["g"]);
        let report = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(report.summary.records, 1);
        assert!(
            graphs
                .due_at(&ctx, Instant::now() + 4 * period)
                .await
                .is_empty(),
            "the refresh took the new rows in"
        );
    }

    /// Where new data cannot be seen (a table without versions) or is not wanted
    /// (`on_new_data = 'off'`), only `EVERY` and `REFRESH` refresh the graph.
    #[tokio::test]
    async fn without_versions_or_with_on_new_data_off_only_the_schedule_refreshes() {
        let later = Instant::now() + 10 * DEFAULT_NEW_DATA_PERIOD;
        let mut rows = FIRST_ROWS.to_vec();
        rows.push(("c2", "email", "b@x.com", 30));

        let (_dir, _location, storage, ctx) = fresh_root().await;
        let graphs = IdentityGraphs::new(storage);
        graphs.create(&ctx, definition(), false).await.unwrap();
        set_source(&ctx, &rows);
        assert!(graphs.due_at(&ctx, later).await.is_empty());

        let (_dir, _location, storage, ctx) = fresh_root().await;
        let source = publish_source(&ctx, &FIRST_ROWS);
        let graphs = IdentityGraphs::new(storage);
        let mut off = definition();
        off.options.insert("on_new_data".into(), "off".into());
        graphs.create(&ctx, off, false).await.unwrap();
        source.publish(source_batches(&rows, 1024)).unwrap();
        assert!(graphs.due_at(&ctx, later).await.is_empty());

        // A new period alone keeps the graph built.
        let mut soon = definition();
        soon.options.insert("on_new_data".into(), "1 second".into());
        soon.or_replace = true;
        let report = graphs.create(&ctx, soon, false).await.unwrap();
        assert!(!report.full_build);
    }

    /// The error of creating `g` with `option = value`.
    async fn create_error(option: &str, value: &str) -> String {
        let (_dir, _location, storage, ctx) = fresh_root().await;
        let mut definition = definition();
        definition.options.insert(option.into(), value.into());
        IdentityGraphs::new(storage)
            .create(&ctx, definition, false)
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn periods_that_are_not_intervals_fail_at_create() {
        let error = create_error("lookback", "soon").await;
        assert!(
            error.contains("lookback") && error.contains("'soon'"),
            "{error}"
        );
        let error = create_error("on_new_data", "sometimes").await;
        assert!(
            error.contains("on_new_data")
                && error.contains("'sometimes'")
                && error.contains("'off'"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_refresh_past_the_log_limit_writes_a_snapshot() {
        let (_dir, location, storage, ctx) = fresh_root().await;
        let mut rows = FIRST_ROWS.to_vec();
        let mut graphs = IdentityGraphs::new(storage.clone());
        graphs.log_rows = 2;
        graphs.create(&ctx, definition(), false).await.unwrap();
        // Three new rows, and the two at the watermark read again, do not fit a log of two.
        rows.extend([
            ("w2", "anonymous_id", "d2", 30),
            ("w2", "email", "a@x.com", 30),
            ("w3", "user_id", "u3", 31),
        ]);
        set_source(&ctx, &rows);
        let report = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(report.summary.records, 2);
        let phases: Vec<&str> = report.phases.iter().map(|(phase, _)| *phase).collect();
        assert_eq!(
            phases,
            ["read and stitch", "tables", "publish and index", "state"],
            "the tables are published before the snapshot is written"
        );
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        assert_eq!(
            (manifest.version, manifest.log.len()),
            (2, 0),
            "a new snapshot, and no log"
        );
        let before = tables(&ctx).await;
        assert!(
            before[1].iter().any(|row| row.contains("w3")),
            "{:?}",
            before[1]
        );

        // A new engine on the same storage root loads that snapshot: the same tables.
        drop((graphs, storage));
        let (report, after) = restarted(&location, &rows).await;
        assert_eq!(report.summary.records, 0, "nothing new after the snapshot");
        assert_eq!(after, before);
    }

    /// With a lookback, a refresh reads its window again. Its log holds the rows that change
    /// the graph and every row of a record they change, which decide where it is processed,
    /// but not rows repeating what the graph holds; a restart replays it to the same tables.
    #[tokio::test]
    async fn a_refresh_logs_what_changes_the_graph_not_the_window_read_again() {
        let LookingBack {
            _dir,
            location,
            storage,
            ctx,
            graphs,
        } = built_looking_back_a_minute().await;
        // A new record, and the known contact c1 seen with w1's device: c1 changes, w1 not.
        let mut rows = FIRST_ROWS.to_vec();
        rows.extend([
            ("w2", "anonymous_id", "d2", 30),
            ("c1", "anonymous_id", "d1", 25),
        ]);
        set_source(&ctx, &rows);
        let report = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(report.rows_read, 6, "the whole minute is read");
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        let logged: Vec<u64> = manifest.log.iter().map(|entry| entry.rows).collect();
        assert_eq!(logged, [4], "w2, and c1's three rows; not w1's two");
        assert_eq!(report.rows_logged, 4);
        let folder = version_folder("g", manifest.version);
        let batches = storage
            .get_arrow(&format!("{folder}/{}", manifest.log[0].file))
            .await
            .unwrap();
        let keys: Vec<&str> = batches
            .iter()
            .flat_map(|batch| batch.column(0).as_string::<i32>().iter().flatten())
            .collect();
        assert!(!keys.contains(&"w1"), "{keys:?}");

        // The same rows again change nothing and are not logged.
        let idle = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!((idle.rows_read, idle.summary.records), (6, 0));
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        assert_eq!(manifest.log.len(), 1);

        let before = tables(&ctx).await;
        drop((graphs, storage));
        let (report, after) = restarted(&location, &rows).await;
        assert_eq!(report.summary.records, 0, "nothing new after the replay");
        assert_eq!(after, before);
    }

    /// A refresh whose log cannot be written still publishes its rows, and leaves them to the
    /// next refresh: that one logs them though they change nothing by then (the graph holds
    /// them already), and commits, so that a restart shows them (see `uncommitted`).
    #[tokio::test]
    async fn rows_whose_log_failed_are_logged_and_committed_by_the_next_refresh() {
        let LookingBack {
            _dir: dir,
            location,
            storage,
            ctx,
            graphs,
        } = built_looking_back_a_minute().await;
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        // A directory where the log is written aside: creating the file fails, even as root.
        let obstacle = dir
            .path()
            .join(version_folder("g", manifest.version))
            .join("log-000001.arrow.partial");
        std::fs::create_dir_all(&obstacle).unwrap();
        // A new record, and a late row (before the watermark) that gives c1 w1's device.
        let mut rows = FIRST_ROWS.to_vec();
        rows.extend([
            ("w2", "anonymous_id", "d2", 30),
            ("c1", "anonymous_id", "d1", 15),
        ]);
        set_source(&ctx, &rows);
        assert!(
            graphs.refresh(&ctx, "g").await.is_err(),
            "the log cannot be written"
        );
        let published = tables(&ctx).await;
        assert!(
            format!("{published:?}").contains("w2"),
            "published regardless"
        );
        std::fs::remove_dir(&obstacle).unwrap();

        let again = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(again.summary.records, 0, "the graph holds the rows already");
        // By now c1's late row repeats what the graph holds: only the failure says it must
        // be logged.
        assert_eq!(again.rows_logged, 6, "every row read again");
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        assert_eq!(manifest.log.len(), 1);
        assert_eq!(tables(&ctx).await, published);

        drop((graphs, storage));
        let (_, after) = restarted(&location, &rows).await;
        assert_eq!(after, published);
    }

    /// A row that only moves an identifier's first seen (a known record landed late, with an
    /// earlier time) is published and logged: a restart shows the same first seen.
    #[tokio::test]
    async fn a_refresh_that_only_moves_a_first_seen_publishes_and_logs_it() {
        let LookingBack {
            _dir,
            location,
            storage,
            ctx,
            graphs,
        } = built_looking_back_a_minute().await;
        let built = tables(&ctx).await;
        let mut rows = FIRST_ROWS.to_vec();
        rows.push(("w1", "anonymous_id", "d1", 5));
        set_source(&ctx, &rows);
        let report = graphs.refresh(&ctx, "g").await.unwrap();
        assert_eq!(
            (
                report.summary.records,
                report.summary.reseen,
                report.rows_logged
            ),
            (0, 1, 1)
        );
        let before = tables(&ctx).await;
        assert_ne!(before[0], built[0], "d1's first seen moved");

        drop((graphs, storage));
        let (_, after) = restarted(&location, &rows).await;
        assert_eq!(after, before);
    }

    #[tokio::test]
    async fn a_restart_replays_logged_refreshes_onto_the_snapshot() {
        let (_dir, location, storage, ctx) = fresh_root().await;
        let mut rows = FIRST_ROWS.to_vec();
        let graphs = IdentityGraphs::new(storage.clone());
        graphs.create(&ctx, definition(), false).await.unwrap();
        // Two refreshes: a new record, then a known record gaining an identifier that merges.
        rows.extend([
            ("w2", "anonymous_id", "d2", 30),
            ("w2", "email", "b@x.com", 30),
        ]);
        set_source(&ctx, &rows);
        graphs.refresh(&ctx, "g").await.unwrap();
        // Nothing new: the rows at the watermark are read again, repeat what the graph holds
        // and change nothing, so nothing is logged.
        let idle = graphs.refresh(&ctx, "g").await.unwrap();
        assert!(idle.rows_read > 0 && idle.summary.records == 0);
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        assert_eq!(
            manifest.log.len(),
            1,
            "a refresh that changed nothing is not logged"
        );
        rows.extend([
            ("w2", "user_id", "u1", 40),
            ("w3", "anonymous_id", "d1", 41),
        ]);
        set_source(&ctx, &rows);
        let report = graphs.refresh(&ctx, "g").await.unwrap();
        assert!(report.summary.records > 0);
        let manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        assert_eq!(
            manifest.version, 1,
            "refreshes append to the log, not a new snapshot"
        );
        assert_eq!(manifest.log.len(), 2);
        let before = tables(&ctx).await;
        assert!(before[2].len() > 4, "a merge was logged: {:?}", before[2]);

        // A new engine on the same storage root: snapshot, then the log, gives the same tables.
        drop((graphs, storage));
        let (report, after) = restarted(&location, &rows).await;
        assert_eq!(
            report.summary.records, 0,
            "nothing new to apply after the replay"
        );
        assert_eq!(after, before);

        // Logs written as Parquet, as versions before the IPC log did, replay the same.
        let storage = Storage::open(&location, &BTreeMap::new()).await.unwrap();
        let graphs = IdentityGraphs::new(storage.clone());
        let mut manifest = graphs.read_manifest("g").await.unwrap().unwrap();
        let folder = version_folder("g", manifest.version);
        for entry in &mut manifest.log {
            let batches = storage
                .get_arrow(&format!("{folder}/{}", entry.file))
                .await
                .unwrap();
            entry.file = entry.file.replace(".arrow", ".parquet");
            storage
                .put_parquet(
                    &format!("{folder}/{}", entry.file),
                    batches[0].schema(),
                    &batches,
                )
                .await
                .unwrap();
        }
        storage
            .put_json(&format!("{STATE_ROOT}/g/CURRENT"), &manifest)
            .await
            .unwrap();
        drop((graphs, storage));
        let (report, from_parquet) = restarted(&location, &rows).await;
        assert!(!report.full_build, "the state loaded, not built again");
        assert_eq!(from_parquet, before);
    }
}
