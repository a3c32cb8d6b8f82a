//! Bulk loads into a landed table: CSV, NDJSON and Parquet files (local paths or object
//! store URLs), checked against the table's columns, in one atomic commit per load.
//!
//! Rows stream through in chunks, each written as a data file; only after the last file is
//! written does one log entry add them all (or, for a new table, create it with them). A
//! bad row anywhere stops the load before that entry exists, so the table is unchanged: the
//! files already written are orphans that no snapshot names.
//!
//! [`Loader`] is the part shared with `COPY … FROM STDIN`: push batches, then commit.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions};
use futures::StreamExt;

use crate::Engine;
use crate::error::{C360Error, Result};
use crate::storage::delta;
use crate::storage::table::{self, LandedTable, conform_batch};
use crate::storage::writer::TableWriter;

/// What a load did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub table: String,
    pub rows: u64,
    pub files: usize,
    pub version: u64,
    pub created: bool,
}

/// Collects batches for one table and commits them together.
pub struct Loader {
    existing: Option<Arc<LandedTable>>,
    name: String,
    storage: crate::storage::Storage,
    /// Created with the first batch when the table is new.
    writer: Option<TableWriter>,
    /// What `first_row` of [`Loader::push`] counts, for error messages: `row` for files,
    /// `line` for COPY, whose users look for the line psql or their driver sent.
    unit: &'static str,
}

impl Loader {
    /// A load into `name`: the landed table if it exists, else a new one whose columns are
    /// those of the first batch pushed.
    pub fn new(engine: &Engine, name: &str) -> Result<Loader> {
        table::validate_name(name)?;
        let existing = engine.landed().get(name);
        let writer = existing
            .as_ref()
            .map(|t| TableWriter::new(engine.storage(), name, t.schema()));
        Ok(Loader {
            existing,
            name: name.to_string(),
            storage: engine.storage().clone(),
            writer,
            unit: "row",
        })
    }

    /// Makes error messages name lines, not rows (for COPY, where the first line can be a
    /// header and `first_row` counts it).
    pub fn counting_lines(mut self) -> Loader {
        self.unit = "line";
        self
    }

    /// Whether the load goes into a table that existed when it started.
    pub fn table_exists(&self) -> bool {
        self.existing.is_some()
    }

    /// The columns rows must fit (once known).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.writer.as_ref().map(|w| w.schema().clone())
    }

    pub fn rows(&self) -> u64 {
        self.writer.as_ref().map_or(0, TableWriter::rows)
    }

    /// Adds `batch`, read from `source` where its first row is data row `first_row` (1-based),
    /// which error messages use to point at the offending line.
    pub async fn push(&mut self, batch: RecordBatch, source: &str, first_row: u64) -> Result<()> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => self.writer.insert(TableWriter::new(
                &self.storage,
                &self.name,
                delta::storable_schema(&batch.schema())?,
            )),
        };
        let unit = self.unit;
        let batch = conform_batch(writer.schema(), &batch).map_err(|misfit| {
            let place = match misfit.row {
                Some(row) => format!("{unit} {}", first_row + row as u64),
                None => "header".to_string(),
            };
            C360Error::BadRow {
                input: source.to_string(),
                place,
                column: misfit.column,
                message: misfit.message,
                table: self.name.clone(),
                kind: misfit.kind,
            }
        })?;
        writer.push(batch).await
    }

    /// Publishes every pushed row in one commit and registers a new table in `engine`.
    pub async fn commit(self, engine: &Engine) -> Result<LoadReport> {
        let Some(writer) = self.writer else {
            return Err(C360Error::InvalidArgument(format!(
                "nothing to load into the new table {}: no columns were read",
                self.name
            )));
        };
        let (rows, schema) = (writer.rows(), writer.schema().clone());
        let adds = writer.finish().await?;
        let files = adds.len();
        let (version, created) = match &self.existing {
            Some(table) => (table.commit("WRITE", adds, Vec::new()).await?, false),
            None => {
                let table =
                    LandedTable::create_with(&self.storage, &self.name, schema, adds).await?;
                let version = table.snapshot().version;
                engine.landed().insert(Arc::new(table))?;
                (version, true)
            }
        };
        Ok(LoadReport {
            table: self.name,
            rows,
            files,
            version,
            created,
        })
    }
}

/// Loads `inputs` into table `name` in one commit; `progress` gets the rows read so far.
pub async fn load_files(
    engine: &Engine,
    name: &str,
    inputs: &[String],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LoadReport> {
    if inputs.is_empty() {
        return Err(C360Error::InvalidArgument(
            "no file to load: give one or more files or URLs".into(),
        ));
    }
    let mut loader = Loader::new(engine, name)?;
    for input in inputs {
        let frame = read(engine, input, loader.schema()).await?;
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| read_error(input, e))?;
        let mut row = 1;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| read_error(input, e))?;
            let rows = batch.num_rows() as u64;
            loader.push(batch, input, row).await?;
            row += rows;
            progress(loader.rows());
        }
    }
    loader.commit(engine).await
}

fn read_error(input: &str, e: datafusion::error::DataFusionError) -> C360Error {
    C360Error::InvalidArgument(format!("{input}: {e}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Csv,
    NdJson,
    Parquet,
}

fn format_of(input: &str) -> Result<Format> {
    let lower = input.to_ascii_lowercase();
    let lower = lower.split(['?', '#']).next().unwrap_or_default();
    if lower.ends_with(".csv") {
        Ok(Format::Csv)
    } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") || lower.ends_with(".json") {
        Ok(Format::NdJson)
    } else if lower.ends_with(".parquet") {
        Ok(Format::Parquet)
    } else {
        Err(C360Error::InvalidArgument(format!(
            "{input}: unknown format (name it .csv, .ndjson, .jsonl, .json or .parquet)"
        )))
    }
}

/// A DataFrame over one input. For an existing table, CSV columns are read as text and cast
/// by [`conform_batch`], which names the row and value that do not fit; inferring types
/// would report such a row less clearly, or not at all.
async fn read(engine: &Engine, input: &str, target: Option<SchemaRef>) -> Result<DataFrame> {
    let format = format_of(input)?;
    register_url(engine, input)?;
    let ctx = engine.context();
    let failed = |e| read_error(input, e);
    let extension = std::path::Path::new(input.split(['?', '#']).next().unwrap_or(input))
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    Ok(match format {
        Format::Csv => {
            let options = CsvReadOptions::new()
                .has_header(true)
                .file_extension(&extension);
            if target.is_none() {
                ctx.read_csv(input, options).await.map_err(failed)?
            } else {
                let inferred = ctx.read_csv(input, options.clone()).await.map_err(failed)?;
                let text = Schema::new(
                    inferred
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                );
                ctx.read_csv(input, options.schema(&text))
                    .await
                    .map_err(failed)?
            }
        }
        Format::NdJson => {
            let options = JsonReadOptions {
                file_extension: &extension,
                ..Default::default()
            };
            ctx.read_json(input, options).await.map_err(failed)?
        }
        Format::Parquet => {
            let options = ParquetReadOptions {
                file_extension: &extension,
                ..Default::default()
            };
            ctx.read_parquet(input, options).await.map_err(failed)?
        }
    })
}

/// Inputs with a scheme (s3://, gs://, az://) are read through an object store built with
/// the storage options of the config, as the storage root is.
fn register_url(engine: &Engine, input: &str) -> Result<()> {
    let Ok(url) = url::Url::parse(input) else {
        return Ok(());
    };
    if url.scheme().len() <= 1 || url.scheme() == "file" {
        return Ok(());
    }
    let (store, _) = object_store::parse_url_opts(&url, engine.settings().storage_options.iter())
        .map_err(|e| C360Error::StorageUrl {
        url: input.to_string(),
        message: e.to_string(),
    })?;
    engine
        .context()
        .runtime_env()
        .register_object_store(&url, Arc::from(store));
    Ok(())
}
