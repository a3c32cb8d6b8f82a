//! Delta checkpoints: the whole table state at one version in one Parquet file
//! (`_delta_log/<version>.checkpoint.parquet`, named by `_delta_log/_last_checkpoint`), so
//! that opening a table whose log has grown long (a group commit per collector flush) reads
//! that file and the few commits after it. Other engines read the same checkpoints.
//!
//! The file holds one action per row in nullable struct columns (`protocol`, `metaData`,
//! `add`, …), the Spark layout. Actions go through arrow's JSON codec both ways, so the
//! checkpoint carries exactly what the serde types of `delta.rs` say, and nothing is
//! converted by hand. A checkpoint is an optimization: it is written after the commit it
//! describes exists, and anything unreadable in it means a full replay of the log.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::json::{LineDelimitedWriter, ReaderBuilder};
use datafusion::parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::Storage;
use super::delta::{self, Action, LOG_DIR, Snapshot};
use crate::error::{C360Error, Result};

/// Write a checkpoint every this many versions.
pub const EVERY: u64 = 100;

#[derive(Serialize, Deserialize)]
struct LastCheckpoint {
    version: u64,
    size: u64,
}

fn map() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "key_value",
            DataType::Struct(Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, true),
            ])),
            false,
        )),
        false,
    )
}

fn record(fields: Vec<Field>) -> DataType {
    DataType::Struct(Fields::from(fields))
}

/// The checkpoint columns of the actions c360 writes (Delta protocol, "Checkpoint Schema").
fn schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let long = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        Field::new(
            "protocol",
            record(vec![
                Field::new("minReaderVersion", DataType::Int32, true),
                Field::new("minWriterVersion", DataType::Int32, true),
            ]),
            true,
        ),
        Field::new(
            "metaData",
            record(vec![
                text("id", true),
                text("name", true),
                text("description", true),
                Field::new(
                    "format",
                    record(vec![
                        text("provider", true),
                        Field::new("options", map(), true),
                    ]),
                    true,
                ),
                text("schemaString", true),
                Field::new(
                    "partitionColumns",
                    DataType::new_list(DataType::Utf8, true),
                    true,
                ),
                Field::new("configuration", map(), true),
                long("createdTime"),
            ]),
            true,
        ),
        Field::new(
            "add",
            record(vec![
                text("path", true),
                Field::new("partitionValues", map(), true),
                long("size"),
                long("modificationTime"),
                Field::new("dataChange", DataType::Boolean, true),
                text("stats", true),
            ]),
            true,
        ),
    ]))
}

fn path(dir: &str, version: u64) -> String {
    format!("{dir}/{LOG_DIR}/{version:020}.checkpoint.parquet")
}

fn last_path(dir: &str) -> String {
    format!("{dir}/{LOG_DIR}/_last_checkpoint")
}

/// Writes the checkpoint of `snapshot` for the table in `dir`. The encoding (every active
/// file of the table) runs on a blocking thread, not on the async workers that serve the
/// collector's requests.
pub async fn write(storage: &Storage, dir: &str, snapshot: Arc<Snapshot>) -> Result<()> {
    let version = snapshot.version;
    let failed = move |what: &str, e: &dyn std::fmt::Display| {
        C360Error::Corrupt(format!("checkpoint {version}: {what}: {e}"))
    };
    let encoded = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64)> {
        let mut actions = vec![
            Action::Protocol(snapshot.protocol.clone()),
            Action::MetaData(snapshot.metadata.clone()),
        ];
        actions.extend(
            snapshot
                .files
                .values()
                .map(|add| Action::Add((**add).clone())),
        );
        let lines = delta::encode_commit(&actions)?;
        let mut decoder = ReaderBuilder::new(schema())
            .with_batch_size(actions.len().max(1))
            .build_decoder()
            .map_err(|e| failed("encoding", &e))?;
        decoder.decode(&lines).map_err(|e| failed("encoding", &e))?;
        let batch = decoder
            .flush()
            .map_err(|e| failed("encoding", &e))?
            .ok_or_else(|| failed("encoding", &"no rows"))?;
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, schema(), None)
            .map_err(|e| failed("encoding", &e))?;
        writer.write(&batch).map_err(|e| failed("encoding", &e))?;
        writer.close().map_err(|e| failed("encoding", &e))?;
        Ok((buffer, actions.len() as u64))
    })
    .await
    .map_err(|e| failed("encoding task", &e))?;
    let (bytes, size) = encoded?;
    storage.put(&path(dir, version), bytes).await?;
    let last = LastCheckpoint { version, size };
    let bytes = serde_json::to_vec(&last).map_err(|e| failed("_last_checkpoint", &e))?;
    storage.put(&last_path(dir), bytes).await
}

/// The snapshot of the last checkpoint of the table in `dir`, if there is a readable one.
pub async fn read(storage: &Storage, dir: &str) -> Option<Snapshot> {
    let last = storage.get_if_exists(&last_path(dir)).await.ok()??;
    let last: LastCheckpoint = serde_json::from_slice(&last).ok()?;
    let name = path(dir, last.version);
    let batches = storage.get_parquet(&name).await.ok()?;
    // Back to JSON lines (null columns are left out), then to the serde actions.
    let mut writer = LineDelimitedWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .ok()?;
    writer.finish().ok()?;
    let lines = writer.into_inner();
    let actions = delta::decode_commit(&name, &lines).ok()?;
    Snapshot::from_actions(&name, last.version, actions).ok()
}
