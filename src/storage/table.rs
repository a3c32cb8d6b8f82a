//! A landed table: Parquet files plus a Delta log, with atomic commits.
//!
//! A commit writes its data files first (each fsync'd on a local root), then publishes the
//! next log entry with put-if-absent. The log entry is the commit: until it exists no reader
//! sees the files, and a crash before it leaves only orphan files that no snapshot names
//! (vacuum deletes them later). Two writers racing for the same version cannot both win;
//! the loser replays what the winner committed and tries the next version.
//!
//! Readers replay the log once, then keep the snapshot and read only newer entries.

use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::SchemaRef;

use super::Storage;
use super::checkpoint;
use super::delta::{self, Action, Add, Format, MetaData, Remove, Snapshot};
use crate::error::{C360Error, Result};

/// Where landed tables live in the storage root.
pub const TABLES_DIR: &str = "tables";

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub version: u64,
    pub rows: usize,
    pub files: usize,
}

#[derive(Debug)]
pub struct LandedTable {
    name: String,
    storage: Storage,
    /// `tables/<name>` in the storage root.
    dir: String,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serializes this process's commits, so that version races happen only between
    /// processes (and replays stay rare).
    writer: tokio::sync::Mutex<()>,
    /// The checkpoint waiting to be written in the background, and whether a writer task
    /// runs: one at a time, so that `_last_checkpoint` only moves forward, and a newer
    /// request replaces one not yet started, so that a slow store never piles them up.
    checkpoints: Arc<Mutex<CheckpointSlot>>,
}

#[derive(Debug, Default)]
struct CheckpointSlot {
    pending: Option<Arc<Snapshot>>,
    running: bool,
}

impl LandedTable {
    /// Opens table `name`, or `None` when it has no log.
    pub async fn open(storage: &Storage, name: &str) -> Result<Option<LandedTable>> {
        let dir = format!("{TABLES_DIR}/{name}");
        // The last checkpoint, then the commits after it; a full replay without one.
        let snapshot = match checkpoint::read(storage, &dir).await {
            Some(snapshot) => snapshot,
            None => match replay(storage, name, &dir).await? {
                Some(snapshot) => snapshot,
                None => return Ok(None),
            },
        };
        let table = LandedTable::new(storage, name, snapshot);
        table.refresh().await?;
        Ok(Some(table))
    }

    /// Creates table `name` with `schema` (made storable, see [`delta::storable_schema`]).
    pub async fn create(storage: &Storage, name: &str, schema: SchemaRef) -> Result<LandedTable> {
        LandedTable::create_with(storage, name, schema, Vec::new()).await
    }

    /// Creates table `name` holding the data files `adds` (written with [`write_data_file`])
    /// in its first commit: a load into a new table either creates it full or not at all.
    pub async fn create_with(
        storage: &Storage,
        name: &str,
        schema: SchemaRef,
        adds: Vec<Add>,
    ) -> Result<LandedTable> {
        validate_name(name)?;
        let schema = delta::storable_schema(&schema)?;
        let metadata = MetaData {
            id: uuid::Uuid::new_v4().to_string(),
            format: Format {
                provider: "parquet".into(),
                options: Default::default(),
            },
            schema_string: delta::schema_to_string(&schema)?,
            partition_columns: Vec::new(),
            configuration: Default::default(),
            created_time: Some(now_ms()),
        };
        let mut actions = vec![
            commit_info("CREATE TABLE"),
            Action::Protocol(delta::protocol()),
            Action::MetaData(metadata),
        ];
        actions.extend(adds.into_iter().map(Action::Add));
        let dir = format!("{TABLES_DIR}/{name}");
        let log = format!("{dir}/{}/{}", delta::LOG_DIR, delta::commit_name(0));
        if !storage
            .put_if_absent(&log, delta::encode_commit(&actions)?)
            .await?
        {
            return Err(C360Error::AlreadyExists(format!("landed table {name}")));
        }
        let snapshot = Snapshot::from_first_commit(&delta::commit_name(0), actions)?;
        Ok(LandedTable::new(storage, name, snapshot))
    }

    /// Opens `name`, creating it with `schema` if it does not exist. An existing table must
    /// have the same columns, so that a changed definition is an error rather than a surprise.
    pub async fn open_or_create(
        storage: &Storage,
        name: &str,
        schema: SchemaRef,
    ) -> Result<LandedTable> {
        if let Some(table) = LandedTable::open(storage, name).await? {
            let wanted = delta::storable_schema(&schema)?;
            if table.schema().fields() != wanted.fields() {
                return Err(C360Error::InvalidArgument(format!(
                    "landed table {name} exists with columns ({}) but ({}) were expected",
                    describe(&table.schema()),
                    describe(&wanted)
                )));
            }
            return Ok(table);
        }
        match LandedTable::create(storage, name, schema.clone()).await {
            Err(C360Error::AlreadyExists(_)) => LandedTable::open(storage, name)
                .await?
                .ok_or_else(|| C360Error::Corrupt(format!("landed table {name} vanished"))),
            other => other,
        }
    }

    fn new(storage: &Storage, name: &str, snapshot: Snapshot) -> LandedTable {
        LandedTable {
            name: name.to_string(),
            storage: storage.clone(),
            dir: format!("{TABLES_DIR}/{name}"),
            snapshot: RwLock::new(Arc::new(snapshot)),
            writer: tokio::sync::Mutex::new(()),
            checkpoints: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schema(&self) -> SchemaRef {
        self.snapshot().schema.clone()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The folder of the table, relative to the storage root.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The last snapshot this process knows of (see [`LandedTable::refresh`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the log entries written since the cached snapshot (by another process, or a
    /// writer of this one that has not published yet) and returns the newest snapshot.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>> {
        let mut current = self.snapshot();
        let mut next: Option<Snapshot> = None;
        loop {
            let version = next.as_ref().map_or(current.version, |s| s.version) + 1;
            let Some(actions) = read_commit(&self.storage, &self.dir, version).await? else {
                break;
            };
            next.get_or_insert_with(|| (*current).clone())
                .apply(version, actions)?;
        }
        if let Some(next) = next {
            current = self.publish(next);
        }
        Ok(current)
    }

    /// Writes a checkpoint of `snapshot` on a task of its own. It is an optimization (a
    /// failure costs the next open a longer replay), and its cost grows with the number of
    /// files, so the commit that asks for it does not wait for it: the group commit's
    /// latency stays independent of the table's size.
    fn checkpoint_in_background(&self, snapshot: Arc<Snapshot>) {
        {
            let mut slot = lock_slot(&self.checkpoints);
            slot.pending = Some(snapshot);
            if slot.running {
                return;
            }
            slot.running = true;
        }
        let (storage, dir, name) = (self.storage.clone(), self.dir.clone(), self.name.clone());
        let checkpoints = Arc::clone(&self.checkpoints);
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut slot = lock_slot(&checkpoints);
                    match slot.pending.take() {
                        Some(next) => next,
                        None => {
                            slot.running = false;
                            return;
                        }
                    }
                };
                if let Err(e) = checkpoint::write(&storage, &dir, next).await {
                    tracing::warn!(table = %name, error = %e, "cannot write a checkpoint");
                }
            }
        });
    }

    /// Waits until the checkpoints asked for so far are written (tests: they are written
    /// in the background).
    #[cfg(test)]
    pub(crate) async fn checkpoints_settled(&self) {
        loop {
            {
                let slot = lock_slot(&self.checkpoints);
                if !slot.running && slot.pending.is_none() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Installs `next` unless a newer snapshot is already there; returns the one installed.
    fn publish(&self, next: Snapshot) -> Arc<Snapshot> {
        let mut guard = match self.snapshot.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if next.version > guard.version {
            *guard = Arc::new(next);
        }
        Arc::clone(&guard)
    }

    /// Casts `batch` to the table's columns, by name, naming the column that does not fit.
    pub fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        conform_batch(&self.schema(), batch)
            .map_err(|misfit| C360Error::InvalidArgument(format!("table {}: {misfit}", self.name)))
    }

    /// Writes `batches` (already in the table's schema) as one durable data file that no
    /// snapshot names yet; [`LandedTable::commit`] makes it part of the table.
    pub async fn write_file(&self, batches: &[RecordBatch]) -> Result<Add> {
        write_data_file(&self.storage, &self.name, self.schema(), batches).await
    }

    /// Appends `batches` in one commit: all rows become visible together, or none do.
    pub async fn append(&self, batches: &[RecordBatch]) -> Result<Committed> {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(Committed {
                version: self.snapshot().version,
                rows: 0,
                files: 0,
            });
        }
        let add = self.write_file(batches).await?;
        let version = self.commit("WRITE", vec![add], Vec::new()).await?;
        Ok(Committed {
            version,
            rows,
            files: 1,
        })
    }

    /// Publishes `adds` and `removes` as the next version. Removing a file that is no longer
    /// in the table (another writer removed it) fails the commit: rewrites must not race.
    pub async fn commit(
        &self,
        operation: &str,
        adds: Vec<Add>,
        removes: Vec<String>,
    ) -> Result<u64> {
        let _writer = self.writer.lock().await;
        let now = now_ms();
        let mut actions = vec![commit_info(operation)];
        actions.extend(adds.into_iter().map(Action::Add));
        let mut snapshot = self.snapshot();
        loop {
            let mut all = actions.clone();
            for path in &removes {
                let Some(add) = snapshot.get(path) else {
                    return Err(C360Error::Conflict(format!(
                        "table {}: file {path} was removed by a concurrent commit",
                        self.name
                    )));
                };
                all.push(Action::Remove(Remove {
                    path: path.clone(),
                    deletion_timestamp: Some(now),
                    data_change: operation != "OPTIMIZE",
                    extended_file_metadata: Some(true),
                    partition_values: Some(Default::default()),
                    size: Some(add.size),
                }));
            }
            let version = snapshot.version + 1;
            let log = format!(
                "{}/{}/{}",
                self.dir,
                delta::LOG_DIR,
                delta::commit_name(version)
            );
            if self
                .storage
                .put_if_absent(&log, delta::encode_commit(&all)?)
                .await?
            {
                let mut next = (*snapshot).clone();
                next.apply(version, all)?;
                let published = self.publish(next);
                if version.is_multiple_of(checkpoint::EVERY) {
                    self.checkpoint_in_background(published);
                }
                return Ok(version);
            }
            // Another process took this version: learn what it did, then try the next one.
            snapshot = self.refresh().await?;
        }
    }
}

/// The checkpoint slot, whatever a panicking holder left: every update is one assignment.
fn lock_slot(slot: &Mutex<CheckpointSlot>) -> std::sync::MutexGuard<'_, CheckpointSlot> {
    match slot.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A batch that does not fit a table: which column, which row (0-based in the batch) when
/// one value is to blame, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Misfit {
    pub column: String,
    pub row: Option<usize>,
    pub message: String,
    pub kind: MisfitKind,
}

/// What is wrong, so that a door can answer with the right code (a SQLSTATE, a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisfitKind {
    /// The batch has a column the table does not.
    UnknownColumn,
    /// A value does not convert to the column's type.
    InvalidValue,
    /// A value does not convert to the column's date, time or timestamp type.
    InvalidDatetime,
    /// A NULL (or a missing column) where the table allows none.
    Null,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.row {
            Some(row) => write!(
                f,
                "row {}: column {}: {}",
                row + 1,
                self.column,
                self.message
            ),
            None => write!(f, "column {}: {}", self.column, self.message),
        }
    }
}

/// Casts `batch` to `schema` by column name. Casts are strict (a value that does not convert
/// is an error, not a silent NULL), and on failure the first offending row is found.
pub fn conform_batch(
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> std::result::Result<RecordBatch, Misfit> {
    let misfit = |column: &str, row, message: String, kind| Misfit {
        column: column.to_string(),
        row,
        message,
        kind,
    };
    if let Some(extra) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(misfit(
            extra.name(),
            None,
            "is not a column of the table".into(),
            MisfitKind::UnknownColumn,
        ));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(column) => column.clone(),
            None if field.is_nullable() => {
                datafusion::arrow::array::new_null_array(field.data_type(), batch.num_rows())
            }
            None => {
                return Err(misfit(
                    field.name(),
                    None,
                    "is missing (it may not be null)".into(),
                    MisfitKind::Null,
                ));
            }
        };
        let cast = match cast_with_options(&column, field.data_type(), &options) {
            Ok(cast) => cast,
            Err(e) => {
                // Find the value to blame, so the user can fix that line of the file.
                let row = (0..column.len()).find(|i| {
                    cast_with_options(&column.slice(*i, 1), field.data_type(), &options).is_err()
                });
                let value = row
                    .and_then(|i| {
                        datafusion::arrow::util::display::array_value_to_string(&column, i).ok()
                    })
                    .map(|v| format!("'{v}' is not a valid {}", field.data_type()))
                    .unwrap_or_else(|| e.to_string());
                let kind = if field.data_type().is_temporal() {
                    MisfitKind::InvalidDatetime
                } else {
                    MisfitKind::InvalidValue
                };
                return Err(misfit(field.name(), row, value, kind));
            }
        };
        if !field.is_nullable() && cast.null_count() > 0 {
            let row = (0..cast.len()).find(|i| cast.is_null(*i));
            return Err(misfit(
                field.name(),
                row,
                "may not be null".into(),
                MisfitKind::Null,
            ));
        }
        columns.push(cast);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| misfit("*", None, e.to_string(), MisfitKind::InvalidValue))
}

/// Writes `batches` as one durable Parquet data file of table `name`, named by nothing yet.
pub async fn write_data_file(
    storage: &Storage,
    name: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<Add> {
    let file = data_file_name();
    let relative = format!("{TABLES_DIR}/{name}/{file}");
    // Encoding is CPU work of milliseconds: keep it off the async workers, which serve
    // the collector's requests meanwhile.
    let (owned, encode_path) = (batches.to_vec(), relative.clone());
    let (buffer, stats) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, String)> {
        let mut buffer = Vec::new();
        let failed = |e| C360Error::parquet(&encode_path, e);
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
            &mut buffer,
            schema.clone(),
            Some(data_file_properties()),
        )
        .map_err(failed)?;
        for batch in &owned {
            writer.write(batch).map_err(failed)?;
        }
        writer.close().map_err(failed)?;
        Ok((buffer, delta::stats(&owned, &schema)))
    })
    .await
    .map_err(|e| C360Error::io(&relative, std::io::Error::other(e)))??;
    put_data_file(storage, name, file, buffer, stats).await
}

/// A fresh data file name: never reused, so a file is never overwritten in place.
pub(crate) fn data_file_name() -> String {
    format!("part-{}.parquet", uuid::Uuid::new_v4())
}

/// How data files are encoded.
pub(crate) fn data_file_properties() -> datafusion::parquet::file::properties::WriterProperties {
    datafusion::parquet::file::properties::WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::SNAPPY)
        .build()
}

/// Stores the encoded data file `file` of table `name` durably (see `Storage::put`) and
/// describes it for a commit.
async fn put_data_file(
    storage: &Storage,
    name: &str,
    file: String,
    buffer: Vec<u8>,
    stats: String,
) -> Result<Add> {
    let relative = format!("{TABLES_DIR}/{name}/{file}");
    let size = buffer.len() as u64;
    storage.put(&relative, buffer).await?;
    Ok(Add {
        path: file,
        partition_values: Default::default(),
        size,
        modification_time: now_ms(),
        data_change: true,
        stats: Some(stats),
    })
}

/// Replays the log of the table in `dir` from commit 0; `None` when there is no log.
async fn replay(storage: &Storage, name: &str, dir: &str) -> Result<Option<Snapshot>> {
    let log_dir = format!("{dir}/{}", delta::LOG_DIR);
    let mut versions: Vec<u64> = storage
        .list_objects(&log_dir)
        .await?
        .into_iter()
        .filter_map(|(file, _, _)| file.strip_suffix(".json")?.parse().ok())
        .collect();
    versions.sort_unstable();
    if versions.first() != Some(&0) {
        return Ok(None);
    }
    let first = read_commit(storage, dir, 0).await?.ok_or_else(|| {
        C360Error::Corrupt(format!("table {name}: commit 0 vanished while opening"))
    })?;
    let mut snapshot = Snapshot::from_first_commit(&delta::commit_name(0), first)?;
    // Replay the contiguous run from 0; anything after a gap cannot have been committed by
    // a protocol-abiding writer and is ignored.
    for (expected, version) in (1..).zip(versions.into_iter().skip(1)) {
        if version != expected {
            break;
        }
        let Some(actions) = read_commit(storage, dir, version).await? else {
            break;
        };
        snapshot.apply(version, actions)?;
    }
    Ok(Some(snapshot))
}

async fn read_commit(storage: &Storage, dir: &str, version: u64) -> Result<Option<Vec<Action>>> {
    let name = delta::commit_name(version);
    let relative = format!("{dir}/{}/{name}", delta::LOG_DIR);
    match storage.get_if_exists(&relative).await? {
        Some(bytes) => Ok(Some(delta::decode_commit(&relative, &bytes)?)),
        None => Ok(None),
    }
}

fn commit_info(operation: &str) -> Action {
    Action::CommitInfo(serde_json::json!({
        "timestamp": now_ms(),
        "operation": operation,
        "operationParameters": {},
        // Appends read nothing: other writers' conflict checks can let them through.
        "isBlindAppend": operation == "WRITE",
        "clientVersion": concat!("c360-", env!("CARGO_PKG_VERSION")),
    }))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn describe(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Table names become folder names and SQL identifiers: keep them to both's common ground.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(C360Error::InvalidArgument(format!(
            "invalid table name '{name}': use lower-case letters, digits and _ (at most 63)"
        )))
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
