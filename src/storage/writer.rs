//! Writing many rows into a landed table as a few data files, for one later commit: what a
//! bulk load and `INSERT INTO landed.…` share. Rows are buffered up to a file's worth, so
//! memory stays bounded however long the input.
//!
//! A full file is encoded and written in the background while the next one fills: on two
//! cores, parsing the input and encoding Parquet then overlap instead of taking turns. One
//! file at a time is in flight, so memory stays at about two files' worth of rows.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::Storage;
use super::delta::Add;
use super::table::write_data_file;
use crate::error::{C360Error, Result};

/// Rows per data file: large enough for efficient Parquet, small enough to bound memory.
pub const ROWS_PER_FILE: usize = 1_000_000;

pub struct TableWriter {
    storage: Storage,
    table: String,
    schema: SchemaRef,
    chunk: Vec<RecordBatch>,
    chunk_rows: usize,
    adds: Vec<Add>,
    rows: u64,
    /// The file being written, if any.
    in_flight: Option<tokio::task::JoinHandle<Result<Add>>>,
}

impl TableWriter {
    /// Writes files of table `table`, whose rows must have `schema` (see `conform_batch`).
    pub fn new(storage: &Storage, table: &str, schema: SchemaRef) -> TableWriter {
        TableWriter {
            storage: storage.clone(),
            table: table.to_string(),
            schema,
            chunk: Vec::new(),
            chunk_rows: 0,
            adds: Vec::new(),
            rows: 0,
            in_flight: None,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.chunk_rows += batch.num_rows();
        self.chunk.push(batch);
        if self.chunk_rows >= ROWS_PER_FILE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.chunk_rows == 0 {
            self.chunk.clear();
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.chunk_rows = 0;
        self.wait().await?;
        let (storage, table, schema) = (
            self.storage.clone(),
            self.table.clone(),
            self.schema.clone(),
        );
        self.in_flight = Some(tokio::spawn(async move {
            write_data_file(&storage, &table, schema, &chunk).await
        }));
        Ok(())
    }

    /// Waits for the file in flight, if any.
    async fn wait(&mut self) -> Result<()> {
        if let Some(writing) = self.in_flight.take() {
            let add = writing
                .await
                .map_err(|e| C360Error::io(&self.table, std::io::Error::other(e)))??;
            self.adds.push(add);
        }
        Ok(())
    }

    /// Writes what is buffered and returns every file written, for one commit.
    pub async fn finish(mut self) -> Result<Vec<Add>> {
        self.flush().await?;
        self.wait().await?;
        Ok(self.adds)
    }
}
