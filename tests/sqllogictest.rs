//! Runs every `tests/sql/*.slt` file, each against a fresh engine on the demo workspace.
//!
//! Set `C360_SLT_COMPLETE=1` to rewrite the expected results after a deliberate change, then
//! review the diff. `C360_SLT_FILTER=name` runs only the files whose name contains `name`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use c360::{C360Error, Engine, Settings};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{DBOutput, DefaultColumnType};

struct SltEngine {
    engine: Engine,
    _data: tempfile::TempDir,
}

#[async_trait]
impl sqllogictest::AsyncDB for SltEngine {
    type Error = C360Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, C360Error> {
        let mut results = self.engine.query(sql).await?;
        let Some(result) = results.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        if result.schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = result
            .schema
            .fields()
            .iter()
            .map(|field| column_type(field.data_type()))
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &result.batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| C360Error::arrow("formatting a result", e))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|formatter| match formatter.value(row).to_string() {
                            empty if empty.is_empty() => "(empty)".to_string(),
                            value => value,
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "c360"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating() || matches!(data_type, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else if matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

async fn demo_engine() -> Result<SltEngine, C360Error> {
    let data = tempfile::tempdir().map_err(|e| C360Error::io("tempdir", e))?;
    let settings = Settings {
        data: data.path().display().to_string(),
        workspace: Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"),
        ..Settings::default()
    };
    Ok(SltEngine {
        engine: Engine::open(settings).await?,
        _data: data,
    })
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let filter = std::env::var("C360_SLT_FILTER").unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/sql exists")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "slt"))
        .filter(|path| path.to_string_lossy().contains(&filter))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass() {
    let complete = std::env::var("C360_SLT_COMPLETE").is_ok_and(|v| v == "1");
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files found under tests/sql");
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async { demo_engine().await });
        if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{}", file.display(), e.display(true)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} .slt files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
