//! Output files that appear whole or not at all: written under a hidden temporary name in the
//! same directory, renamed to their final name only once the whole run has succeeded.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use crate::error::{C360Error, Result};

/// A complete file waiting under its temporary name.
pub struct Staged {
    temp: PathBuf,
    dest: PathBuf,
}

/// The hidden name a file is written under: `.name.tmp` never matches a `*.parquet` or
/// `*.csv` table location, so a reader never sees a half-written file.
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp"))
}

/// Streams text (CSV, NDJSON) into a staged file.
pub struct TextFile {
    file: BufWriter<File>,
    staged: Staged,
    bytes: u64,
}

impl TextFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let temp = temp_path(dest);
        let file = File::create(&temp).map_err(|e| C360Error::io(&temp, e))?;
        Ok(TextFile {
            file: BufWriter::with_capacity(1 << 20, file),
            staged: Staged {
                temp,
                dest: dest.to_path_buf(),
            },
            bytes: 0,
        })
    }

    pub fn write(&mut self, text: &str) -> Result<()> {
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| C360Error::io(&self.staged.temp, e))?;
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// Flushes and syncs; returns the staged file and its size.
    pub fn finish(self) -> Result<(Staged, u64)> {
        let temp = self.staged.temp.clone();
        let file = self
            .file
            .into_inner()
            .map_err(|e| C360Error::io(&temp, e.into_error()))?;
        file.sync_all().map_err(|e| C360Error::io(&temp, e))?;
        Ok((self.staged, self.bytes))
    }
}

/// Zstd level 1: several times smaller than Snappy on JSON text, and still fast to write.
/// `created_by` is pinned so that the bytes do not change with the parquet crate's version.
fn properties() -> Result<WriterProperties> {
    let zstd = ZstdLevel::try_new(1).map_err(|e| C360Error::parquet("zstd level", e))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_created_by("c360 generate".to_owned())
        .set_max_row_group_row_count(Some(128 * 1024))
        // Unique ids gain nothing from a dictionary but the time spent building it.
        .set_column_dictionary_enabled(ColumnPath::from("message_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("record_key"), false)
        .set_column_dictionary_enabled(ColumnPath::from("sale_id"), false)
        .build())
}

/// Writes one batch as a Parquet file under its temporary name.
pub fn parquet(dest: &Path, batch: &RecordBatch) -> Result<(Staged, u64)> {
    let temp = temp_path(dest);
    let file = File::create(&temp).map_err(|e| C360Error::io(&temp, e))?;
    let mut writer = ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        batch.schema(),
        Some(properties()?),
    )
    .map_err(|e| C360Error::parquet(&temp, e))?;
    writer
        .write(batch)
        .map_err(|e| C360Error::parquet(&temp, e))?;
    // `into_inner` writes the footer: the file is complete once it returns.
    let buffered = writer
        .into_inner()
        .map_err(|e| C360Error::parquet(&temp, e))?;
    let file = buffered
        .into_inner()
        .map_err(|e| C360Error::io(&temp, e.into_error()))?;
    file.sync_all().map_err(|e| C360Error::io(&temp, e))?;
    let bytes = file.metadata().map_err(|e| C360Error::io(&temp, e))?.len();
    Ok((
        Staged {
            temp,
            dest: dest.to_path_buf(),
        },
        bytes,
    ))
}

/// Removes the temporary files an interrupted earlier run left: staged parts in `table_dirs`,
/// and the staged versions of the `files` in `dir`. Nothing else is touched.
pub fn remove_leftovers(table_dirs: &[PathBuf], dir: &Path, files: &[&str]) -> Result<()> {
    let ours = |d: &Path, name: &str| {
        if table_dirs.iter().any(|t| t == d) {
            name.starts_with(".part-") && name.ends_with(".parquet.tmp")
        } else {
            files
                .iter()
                .any(|f| name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) == Some(*f))
        }
    };
    for d in table_dirs.iter().map(PathBuf::as_path).chain([dir]) {
        for entry in fs::read_dir(d).map_err(|e| C360Error::io(d, e))? {
            let entry = entry.map_err(|e| C360Error::io(d, e))?;
            if ours(d, &entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path()).map_err(|e| C360Error::io(entry.path(), e))?;
            }
        }
    }
    Ok(())
}

/// Publishes a successful run: drops the `part-*.parquet` files of an earlier, larger run from
/// the table directories (they would otherwise be read as part of the new tables), then renames
/// every staged file to its final name.
pub fn commit(staged: Vec<Staged>, table_dirs: &[PathBuf]) -> Result<()> {
    let keep: HashSet<&Path> = staged.iter().map(|s| s.dest.as_path()).collect();
    for dir in table_dirs {
        for entry in fs::read_dir(dir).map_err(|e| C360Error::io(dir, e))? {
            let entry = entry.map_err(|e| C360Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with("part-")
                && name.ends_with(".parquet")
                && !keep.contains(path.as_path())
            {
                fs::remove_file(&path).map_err(|e| C360Error::io(&path, e))?;
            }
        }
    }
    for s in &staged {
        fs::rename(&s.temp, &s.dest).map_err(|e| C360Error::io(&s.dest, e))?;
    }
    Ok(())
}

/// Best-effort removal of the staged files of a failed run; the earlier data stays untouched.
pub fn discard(staged: &[Staged]) {
    for s in staged {
        let _ = fs::remove_file(&s.temp);
    }
}
