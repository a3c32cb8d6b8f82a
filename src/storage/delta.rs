//! The Delta Lake transaction log, written and replayed by c360 itself.
//!
//! A landed table is a folder of Parquet files and a `_delta_log/` of numbered JSON commits
//! (`00000000000000000000.json`, …). Each commit is a list of actions: `protocol` and
//! `metaData` in the first, then `add` (a file joins the table) and `remove` (it leaves). The
//! table at version N is the replay of commits 0..=N. We write only reader version 1 /
//! writer version 2 features, so DuckDB, Spark, Trino and the `deltalake` packages read these
//! tables as they are.
//!
//! This file knows the format (actions, schema strings, stats); `table.rs` knows commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::kernels::aggregate;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{C360Error, Result};

/// The folder of commits inside a table folder.
pub const LOG_DIR: &str = "_delta_log";

/// The object name of commit `version`, zero-padded as the protocol requires.
pub fn commit_name(version: u64) -> String {
    format!("{version:020}.json")
}

/// One line of a commit file. Unknown actions (`txn`, `cdc`, `domainMetadata`…) are kept as
/// `Other` so that a log touched by another engine still replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Protocol(Protocol),
    MetaData(MetaData),
    Add(Add),
    Remove(Remove),
    CommitInfo(Value),
    #[serde(untagged)]
    Other(Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub min_reader_version: u32,
    pub min_writer_version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaData {
    pub id: String,
    pub format: Format,
    pub schema_string: String,
    pub partition_columns: Vec<String>,
    #[serde(default)]
    pub configuration: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub created_time: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Format {
    pub provider: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Relative to the table folder (URL-encoded in the protocol; ours need no escaping).
    pub path: String,
    #[serde(default)]
    pub partition_values: BTreeMap<String, Option<String>>,
    pub size: u64,
    pub modification_time: i64,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remove {
    pub path: String,
    #[serde(default)]
    pub deletion_timestamp: Option<i64>,
    pub data_change: bool,
    #[serde(default)]
    pub extended_file_metadata: Option<bool>,
    #[serde(default)]
    pub partition_values: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// The protocol c360 writes: no table features, readable by every Delta reader.
pub fn protocol() -> Protocol {
    Protocol {
        min_reader_version: 1,
        min_writer_version: 2,
    }
}

/// Serializes a commit: one JSON object per line.
pub fn encode_commit(actions: &[Action]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for action in actions {
        serde_json::to_writer(&mut out, action)
            .map_err(|e| C360Error::Corrupt(format!("cannot encode a Delta action: {e}")))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Parses a commit file; `name` is only for the message.
pub fn decode_commit(name: &str, bytes: &[u8]) -> Result<Vec<Action>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| C360Error::Corrupt(format!("{name}: not UTF-8: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| C360Error::Corrupt(format!("{name}:{}: {e}", i + 1)))
        })
        .collect()
}

/// The table state a replay arrives at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    pub protocol: Protocol,
    pub metadata: MetaData,
    pub schema: SchemaRef,
    /// Active files by path, in the order they were added (scans read them in that order).
    /// Shared, not copied: each commit derives its snapshot from the last one, and with a
    /// few thousand files between compactions a deep copy per group commit would make the
    /// commit's cost grow with the table's history.
    pub files: BTreeMap<u64, Arc<Add>>,
    /// path → key in `files`.
    index: BTreeMap<Arc<str>, u64>,
    next_key: u64,
}

impl Snapshot {
    /// Starts a replay from commit 0, which must carry `protocol` and `metaData`.
    pub fn from_first_commit(name: &str, actions: Vec<Action>) -> Result<Snapshot> {
        Snapshot::from_actions(name, 0, actions)
    }

    /// The snapshot at `version` made of `actions` alone (commit 0, or a checkpoint).
    pub fn from_actions(name: &str, version: u64, actions: Vec<Action>) -> Result<Snapshot> {
        let mut metadata = None;
        let mut protocol = None;
        for action in &actions {
            match action {
                Action::Protocol(p) if p.min_reader_version > 1 => {
                    return Err(C360Error::Corrupt(format!(
                        "{name}: Delta reader version {} is not supported (c360 reads version 1)",
                        p.min_reader_version
                    )));
                }
                Action::Protocol(p) => protocol = Some(p.clone()),
                Action::MetaData(m) => metadata = Some(m.clone()),
                _ => {}
            }
        }
        let metadata =
            metadata.ok_or_else(|| C360Error::Corrupt(format!("{name}: no metaData")))?;
        let protocol =
            protocol.ok_or_else(|| C360Error::Corrupt(format!("{name}: no protocol")))?;
        let schema = Arc::new(schema_from_string(&metadata.schema_string)?);
        let mut snapshot = Snapshot {
            version,
            protocol,
            metadata,
            schema,
            files: BTreeMap::new(),
            index: BTreeMap::new(),
            next_key: 0,
        };
        snapshot.apply(version, actions)?;
        Ok(snapshot)
    }

    /// Applies commit `version` on top of this snapshot.
    pub fn apply(&mut self, version: u64, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Add(add) => {
                    if let Some(old) = self.index.remove(add.path.as_str()) {
                        self.files.remove(&old);
                    }
                    self.index
                        .insert(Arc::from(add.path.as_str()), self.next_key);
                    self.files.insert(self.next_key, Arc::new(add));
                    self.next_key += 1;
                }
                Action::Remove(remove) => {
                    if let Some(key) = self.index.remove(remove.path.as_str()) {
                        self.files.remove(&key);
                    }
                }
                Action::MetaData(m) => {
                    self.schema = Arc::new(schema_from_string(&m.schema_string)?);
                    self.metadata = m;
                }
                Action::Protocol(p) => self.protocol = p,
                Action::CommitInfo(_) | Action::Other(_) => {}
            }
        }
        self.version = version;
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.index.contains_key(path)
    }

    /// The active file at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<&Add> {
        self.files.get(self.index.get(path)?).map(|add| &**add)
    }

    pub fn row_count(&self) -> Option<u64> {
        self.files
            .values()
            .map(|add| add.stats.as_deref().and_then(num_records))
            .sum()
    }
}

fn num_records(stats: &str) -> Option<u64> {
    serde_json::from_str::<Value>(stats)
        .ok()?
        .get("numRecords")?
        .as_u64()
}

/// The Arrow type a column is stored as, or why it cannot be stored. Landed tables keep to
/// the Delta types that need no table feature: that is why naive timestamps become UTC ones
/// (Delta's `timestamp_ntz` needs reader version 3).
pub fn storable_type(column: &str, data_type: &DataType) -> Result<DataType> {
    Ok(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Boolean => DataType::Boolean,
        DataType::Int8 => DataType::Int8,
        DataType::Int16 | DataType::UInt8 => DataType::Int16,
        DataType::Int32 | DataType::UInt16 => DataType::Int32,
        DataType::Int64 | DataType::UInt32 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float32,
        DataType::Float64 => DataType::Float64,
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Decimal128(p, s) if *p <= 38 && *s >= 0 => DataType::Decimal128(*p, *s),
        DataType::Null => DataType::Utf8,
        // Stored as its values: a dictionary is how a result is held, not what it means.
        DataType::Dictionary(_, value) => storable_type(column, value)?,
        other => {
            return Err(C360Error::InvalidArgument(format!(
                "column {column}: type {other} cannot be stored in a landed table"
            )));
        }
    })
}

/// The storable version of `schema` (see [`storable_type`]).
pub fn storable_schema(schema: &Schema) -> Result<SchemaRef> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(Field::new(
                f.name(),
                storable_type(f.name(), f.data_type())?,
                f.is_nullable(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn delta_type(column: &str, data_type: &DataType) -> Result<String> {
    Ok(match storable_type(column, data_type)? {
        DataType::Utf8 => "string".into(),
        DataType::Binary => "binary".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "byte".into(),
        DataType::Int16 => "short".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "long".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        other => {
            return Err(C360Error::InvalidArgument(format!(
                "column {column}: type {other} has no Delta equivalent"
            )));
        }
    })
}

/// The Spark-JSON `schemaString` of `schema`.
pub fn schema_to_string(schema: &Schema) -> Result<String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(json!({
                "name": f.name(),
                "type": delta_type(f.name(), f.data_type())?,
                "nullable": f.is_nullable(),
                "metadata": {},
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"type": "struct", "fields": fields}).to_string())
}

/// The Arrow schema of a `schemaString` (primitive types only, which is all c360 writes).
pub fn schema_from_string(text: &str) -> Result<Schema> {
    let corrupt = |message: String| C360Error::Corrupt(format!("Delta schema: {message}"));
    let value: Value = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let fields = value
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt("no fields".into()))?;
    let fields = fields
        .iter()
        .map(|field| {
            let name = field
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| corrupt("a field has no name".into()))?;
            let type_name = field
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| corrupt(format!("{name}: only primitive types are supported")))?;
            let nullable = field
                .get("nullable")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Ok(Field::new(
                name,
                arrow_type(type_name).map_err(corrupt)?,
                nullable,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema::new(fields))
}

fn arrow_type(name: &str) -> std::result::Result<DataType, String> {
    Ok(match name {
        "string" => DataType::Utf8,
        "binary" => DataType::Binary,
        "boolean" => DataType::Boolean,
        "byte" => DataType::Int8,
        "short" => DataType::Int16,
        "integer" => DataType::Int32,
        "long" => DataType::Int64,
        "float" => DataType::Float32,
        "double" => DataType::Float64,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        other => {
            let inner = other
                .strip_prefix("decimal(")
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| format!("type {other} is not supported"))?;
            let (p, s) = inner
                .split_once(',')
                .ok_or_else(|| format!("bad decimal type {other}"))?;
            let p: u8 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad decimal {other}"))?;
            let s: i8 = s
                .trim()
                .parse()
                .map_err(|_| format!("bad decimal {other}"))?;
            DataType::Decimal128(p, s)
        }
    })
}

/// Per-file statistics as Delta writes them: row count and null counts, plus min/max of
/// integer columns so that other engines can skip files. Never of strings: the log is never
/// rewritten, so a name or an e-mail in a min/max would outlive its erasure.
pub fn stats(batches: &[RecordBatch], schema: &Schema) -> String {
    let mut builder = StatsBuilder::new(schema);
    for batch in batches {
        builder.add(batch);
    }
    builder.finish()
}

/// [`stats`] gathered batch by batch, for writers that stream a file rather than hold it
/// (compaction): the same figures, without keeping every batch in memory.
pub struct StatsBuilder {
    names: Vec<String>,
    rows: usize,
    nulls: Vec<usize>,
    /// Per column: the running (min, max) of an Int64 column; `None` once a batch has a
    /// column of another type, or while no value has been seen.
    bounds: Vec<Option<(i64, i64)>>,
    /// False once a column is known to have no min/max (not Int64).
    ranged: Vec<bool>,
}

impl StatsBuilder {
    pub fn new(schema: &Schema) -> StatsBuilder {
        let n = schema.fields().len();
        StatsBuilder {
            names: schema.fields().iter().map(|f| f.name().clone()).collect(),
            rows: 0,
            nulls: vec![0; n],
            bounds: vec![None; n],
            ranged: vec![true; n],
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        self.rows += batch.num_rows();
        for (i, column) in batch.columns().iter().enumerate().take(self.names.len()) {
            self.nulls[i] += column.null_count();
            if !self.ranged[i] {
                continue;
            }
            if column.data_type() != &DataType::Int64 {
                self.ranged[i] = false;
                continue;
            }
            let array = column.as_primitive::<Int64Type>();
            if let (Some(lo), Some(hi)) = (aggregate::min(array), aggregate::max(array)) {
                self.bounds[i] = Some(match self.bounds[i] {
                    Some((min, max)) => (min.min(lo), max.max(hi)),
                    None => (lo, hi),
                });
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(self) -> String {
        let mut nulls = serde_json::Map::new();
        let mut mins = serde_json::Map::new();
        let mut maxs = serde_json::Map::new();
        for (i, name) in self.names.iter().enumerate() {
            nulls.insert(name.clone(), json!(self.nulls[i]));
            if let (true, Some((min, max))) = (self.ranged[i], self.bounds[i]) {
                mins.insert(name.clone(), json!(min));
                maxs.insert(name.clone(), json!(max));
            }
        }
        json!({"numRecords": self.rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_strings_round_trip() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("price", DataType::Decimal128(12, 2), true),
        ]);
        let text = schema_to_string(&schema).unwrap();
        assert!(text.contains(r#""type":"decimal(12,2)""#), "{text}");
        assert_eq!(schema_from_string(&text).unwrap(), schema);
    }

    #[test]
    fn commits_round_trip_and_unknown_actions_survive() {
        let add = Add {
            path: "part-1.parquet".into(),
            partition_values: BTreeMap::new(),
            size: 10,
            modification_time: 1,
            data_change: true,
            stats: Some(r#"{"numRecords":3}"#.into()),
        };
        let mut bytes = encode_commit(&[Action::Add(add.clone())]).unwrap();
        bytes.extend_from_slice(b"{\"txn\":{\"appId\":\"x\",\"version\":1}}\n");
        let actions = decode_commit("1.json", &bytes).unwrap();
        assert_eq!(actions[0], Action::Add(add));
        assert!(matches!(actions[1], Action::Other(_)));
    }

    #[test]
    fn nested_types_are_refused_by_column_name() {
        let err = storable_type("tags", &DataType::new_list(DataType::Utf8, true)).unwrap_err();
        assert!(err.to_string().contains("tags"), "{err}");
    }
}
