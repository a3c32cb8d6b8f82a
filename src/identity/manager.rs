//! Named identity graphs: created from SQL, built from their source view, persisted in the
//! storage root, refreshed incrementally, and published as SQL tables.
//!
//! State layout under the storage root, per graph:
//! `identity/<name>/v<version>/<part>.parquet` holds the graph's state at one version, and
//! `identity/<name>/CURRENT` (JSON: definition, version, watermark) names the committed one.
//! A refresh writes a new version folder, then replaces CURRENT in one put, then deletes the
//! old folder, so a crash at any point leaves the previous graph readable and intact.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::prelude::{DataFrame, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::graph::{
    ApplySummary, DEFAULT_HUB_THRESHOLD, IdentityGraph, IdentityRow, Rules, identities_schema,
    merges_schema, records_schema, refused_schema,
};
use crate::ddl::IdentityGraphDefinition;
use crate::error::{C360Error, Result};
use crate::storage::Storage;
use crate::storage::published::PublishedTable;

/// The columns a graph's source must have.
pub const SOURCE_COLUMNS: [&str; 4] = ["record_key", "id_type", "id_value", "seen_at"];
const OPTIONS: [&str; 4] = ["priority", "limits", "blocked", "hub_threshold"];
/// Rows at the watermark are read again on the next refresh (applying them twice is a
/// no-op), so records that share the last timestamp are never skipped.
const STATE_ROOT: &str = "identity";

/// What a build or refresh did, for logs and the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshReport {
    pub graph: String,
    pub full_build: bool,
    pub rows_read: u64,
    pub summary: ApplySummary,
    pub profiles: usize,
    pub duration: Duration,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    definition: IdentityGraphDefinition,
    version: u64,
    /// Largest `seen_at` applied (µs since the epoch).
    watermark: Option<i64>,
}

struct Managed {
    definition: IdentityGraphDefinition,
    graph: IdentityGraph,
    version: u64,
    watermark: Option<i64>,
    last_refresh: Instant,
    tables: [Arc<PublishedTable>; 4],
}

/// Every identity graph of an engine.
pub struct IdentityGraphs {
    storage: Storage,
    graphs: Mutex<BTreeMap<String, Arc<Mutex<Managed>>>>,
}

impl IdentityGraphs {
    pub fn new(storage: Storage) -> IdentityGraphs {
        IdentityGraphs {
            storage,
            graphs: Mutex::new(BTreeMap::new()),
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
            let same = same_definition(&existing.lock().await.definition, &definition);
            if same && (declarative || definition.if_not_exists) {
                return self.refresh(ctx, &name).await;
            }
            if !(declarative || definition.or_replace) {
                return Err(C360Error::AlreadyExists(format!("identity graph {name}")));
            }
        }

        // After a restart, continue from the committed state when the definition is the same.
        if let Some(manifest) = self.read_manifest(&name).await?
            && same_definition(&manifest.definition, &definition)
        {
            let graph = self.load_state(&name, manifest.version, rules).await?;
            self.install(ctx, definition, graph, manifest.version, manifest.watermark)
                .await?;
            return self.refresh(ctx, &name).await;
        }

        let started = Instant::now();
        let mut graph = IdentityGraph::new(rules);
        let (rows_read, watermark, summary) =
            read_and_apply(ctx, &definition, &mut graph, None).await?;
        let version = self.next_version(&name).await?;
        self.commit(&name, &definition, &graph, version, watermark)
            .await?;
        let profiles = graph.profile_count();
        self.install(ctx, definition, graph, version, watermark)
            .await?;
        Ok(RefreshReport {
            graph: name,
            full_build: true,
            rows_read,
            summary,
            profiles,
            duration: started.elapsed(),
        })
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
        let managed = self.managed(name).await?;
        // Held for the whole refresh: two refreshes of one graph never run at once.
        let mut managed = managed.lock().await;
        let started = Instant::now();
        // Counted from the attempt, so that a failing source is retried once a period.
        managed.last_refresh = started;
        let definition = managed.definition.clone();
        let watermark = managed.watermark;
        let (rows_read, new_watermark, summary) =
            read_and_apply(ctx, &definition, &mut managed.graph, watermark).await?;
        let changed = summary.records > 0 || summary.refused > 0;
        if changed {
            let version = managed.version + 1;
            let watermark = new_watermark.max(watermark);
            self.commit(name, &definition, &managed.graph, version, watermark)
                .await?;
            publish(&managed.graph, &managed.tables)?;
            managed.version = version;
            managed.watermark = watermark;
        }
        Ok(RefreshReport {
            graph: name.to_string(),
            full_build: false,
            rows_read,
            summary,
            profiles: managed.graph.profile_count(),
            duration: started.elapsed(),
        })
    }

    /// Builds the graph again from its whole source and commits it as a new version, which
    /// deletes the previous state. `FORGET PROFILE` needs this: the graph never forgets a
    /// value it has seen (an incremental refresh only adds), so once a person's rows are
    /// gone from the source, only a build without them drops their identifiers, records,
    /// merges and refusals. Other people keep their ids: an id is the hash of its founding
    /// identifier, the same in any build.
    pub async fn rebuild(&self, ctx: &SessionContext, name: &str) -> Result<RefreshReport> {
        let managed = self.managed(name).await?;
        let mut managed = managed.lock().await;
        let started = Instant::now();
        let definition = managed.definition.clone();
        let mut graph = IdentityGraph::new(rules_from_options(&definition)?);
        let (rows_read, watermark, summary) =
            read_and_apply(ctx, &definition, &mut graph, None).await?;
        let version = managed.version + 1;
        self.commit(name, &definition, &graph, version, watermark)
            .await?;
        publish(&graph, &managed.tables)?;
        managed.graph = graph;
        managed.version = version;
        managed.watermark = watermark;
        managed.last_refresh = started;
        Ok(RefreshReport {
            graph: name.to_string(),
            full_build: true,
            rows_read,
            summary,
            profiles: managed.graph.profile_count(),
            duration: started.elapsed(),
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

    /// Graphs whose `EVERY` period has passed since their last refresh.
    pub async fn due(&self) -> Vec<String> {
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
            if let Ok(managed) = managed.try_lock()
                && let Some(every) = managed.definition.every
                && managed.last_refresh.elapsed() >= every
            {
                due.push(name);
            }
        }
        due
    }

    async fn install(
        &self,
        ctx: &SessionContext,
        definition: IdentityGraphDefinition,
        graph: IdentityGraph,
        version: u64,
        watermark: Option<i64>,
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
                graph.identities().map_err(graph_error)?,
                &["profile_id", "id_value"],
            )?),
            Arc::new(
                PublishedTable::new(records_schema(), graph.records().map_err(graph_error)?)?
                    .with_join_index(&["record_key"])?,
            ),
            Arc::new(PublishedTable::new(
                merges_schema(),
                graph.merges().map_err(graph_error)?,
            )?),
            Arc::new(PublishedTable::new(
                refused_schema(),
                graph.refused().map_err(graph_error)?,
            )?),
        ];
        for (table_name, table) in names.iter().zip(&tables) {
            ctx.deregister_table(table_name.as_str())?;
            ctx.register_table(table_name.as_str(), Arc::clone(table) as _)?;
        }
        let managed = Managed {
            definition,
            graph,
            version,
            watermark,
            last_refresh: Instant::now(),
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

    async fn load_state(&self, name: &str, version: u64, rules: Rules) -> Result<IdentityGraph> {
        let folder = version_folder(name, version);
        let mut parts = Vec::new();
        for part in super::state::STATE_PARTS {
            let batches = self
                .storage
                .get_parquet(&format!("{folder}/{part}.parquet"))
                .await?;
            parts.push((part.to_string(), batches));
        }
        IdentityGraph::from_state(rules, parts).map_err(graph_error)
    }

    /// Writes the state as a new version, then points CURRENT at it, then drops older ones.
    async fn commit(
        &self,
        name: &str,
        definition: &IdentityGraphDefinition,
        graph: &IdentityGraph,
        version: u64,
        watermark: Option<i64>,
    ) -> Result<()> {
        let folder = version_folder(name, version);
        for (part, batches) in graph.to_state().map_err(graph_error)? {
            let Some(schema) = batches.first().map(RecordBatch::schema) else {
                continue;
            };
            self.storage
                .put_parquet(&format!("{folder}/{part}.parquet"), schema, &batches)
                .await?;
        }
        let manifest = Manifest {
            definition: definition.clone(),
            version,
            watermark,
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

fn publish(graph: &IdentityGraph, tables: &[Arc<PublishedTable>; 4]) -> Result<()> {
    tables[0].publish(graph.identities().map_err(graph_error)?)?;
    tables[1].publish(graph.records().map_err(graph_error)?)?;
    tables[2].publish(graph.merges().map_err(graph_error)?)?;
    tables[3].publish(graph.refused().map_err(graph_error)?)?;
    Ok(())
}

fn same_definition(a: &IdentityGraphDefinition, b: &IdentityGraphDefinition) -> bool {
    a.name == b.name && a.source == b.source && a.options == b.options && a.every == b.every
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
    Rules::new(priority, limits, blocked, hub_threshold).map_err(|e| invalid(e.to_string()))
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

/// Reads the source (rows at or after `watermark`, or all) and applies them to `graph`.
/// Returns the rows read, the largest `seen_at` read, and what the graph did.
async fn read_and_apply(
    ctx: &SessionContext,
    definition: &IdentityGraphDefinition,
    graph: &mut IdentityGraph,
    watermark: Option<i64>,
) -> Result<(u64, Option<i64>, ApplySummary)> {
    let mut frame = source_frame(ctx, &definition.source).await?;
    if let Some(watermark) = watermark {
        frame = frame.filter(col("seen_at").gt_eq(lit(ScalarValue::TimestampMicrosecond(
            Some(watermark),
            None,
        ))))?;
    }
    let batches = frame.collect().await?;
    let mut rows_read = 0u64;
    let mut max_seen: Option<i64> = None;
    let rows = rows_of(&batches);
    let rows = rows.inspect(|row| {
        rows_read += 1;
        max_seen = Some(max_seen.map_or(row.seen_at, |m| m.max(row.seen_at)));
    });
    let summary = graph.apply(rows).map_err(graph_error)?;
    Ok((rows_read, max_seen, summary))
}

/// A graph's source as the stitch reads it: the four columns as text, `seen_at` in µs.
pub async fn source_frame(ctx: &SessionContext, source: &str) -> Result<DataFrame> {
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    Ok(ctx.table(source).await?.select(vec![
        cast(col("record_key"), DataType::Utf8).alias("record_key"),
        cast(col("id_type"), DataType::Utf8).alias("id_type"),
        cast(col("id_value"), DataType::Utf8).alias("id_value"),
        cast(col("seen_at"), micros).alias("seen_at"),
    ])?)
}

/// The rows of batches from [`source_frame`]. A row without a record or a time cannot be
/// placed: it is noise, like an empty value, and is left out.
pub fn rows_of(batches: &[RecordBatch]) -> impl Iterator<Item = IdentityRow<'_>> {
    batches.iter().flat_map(|batch| {
        let keys = batch.column(0).as_string::<i32>();
        let types = batch.column(1).as_string::<i32>();
        let values = batch.column(2).as_string::<i32>();
        let seen = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        (0..batch.num_rows()).filter_map(move |i| {
            if keys.is_null(i) || seen.is_null(i) {
                return None;
            }
            Some(IdentityRow {
                record_key: keys.value(i),
                id_type: if types.is_null(i) { "" } else { types.value(i) },
                id_value: if values.is_null(i) {
                    ""
                } else {
                    values.value(i)
                },
                seen_at: seen.value(i),
            })
        })
    })
}
