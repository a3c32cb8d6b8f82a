//! Upkeep of landed tables: compaction merges the many small files that group commits and
//! small loads leave into one, and vacuum deletes the files no snapshot names any more
//! once they are older than the retention period (readers of older versions, and commits
//! still being written, are given that long).
//!
//! Both are ordinary commits or deletions of unreferenced files, so they run beside
//! appends: an append never conflicts with a compaction, and two compactions of the same
//! files cannot both commit (the second finds its files removed and gives up).

use std::time::Duration;

use super::delta::LOG_DIR;
use super::table::{LandedTable, now_ms};
use crate::error::{C360Error, Result};

/// Files smaller than this are worth merging.
pub const SMALL_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Compact once a table has this many small files.
pub const COMPACT_AT_FILES: usize = 16;
/// Unreferenced files are kept this long: time for readers of older versions (and for
/// commits still writing their files) before vacuum deletes them.
pub const VACUUM_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// At most this many bytes of small files are merged in one compaction (bounds memory).
const COMPACT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    pub files_merged: usize,
    pub rows: usize,
    pub version: u64,
}

impl LandedTable {
    /// Merges the table's small files into one when there are at least `min_files` of them;
    /// `None` when there was nothing to do or a concurrent rewrite got there first.
    pub async fn compact(&self, min_files: usize) -> Result<Option<Compacted>> {
        let snapshot = self.refresh().await?;
        let mut chosen = Vec::new();
        let mut bytes = 0;
        for add in snapshot.files.values() {
            if add.size < SMALL_FILE_BYTES && bytes + add.size <= COMPACT_MAX_BYTES {
                bytes += add.size;
                chosen.push(add.path.clone());
            }
        }
        if chosen.len() < min_files.max(2) {
            return Ok(None);
        }
        let mut batches = Vec::new();
        for path in &chosen {
            batches.extend(
                self.storage()
                    .get_parquet(&format!("{}/{path}", self.dir()))
                    .await?,
            );
        }
        let batches = batches
            .iter()
            .map(|b| self.conform(b))
            .collect::<Result<Vec<_>>>()?;
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let mut add = self.write_file(&batches).await?;
        // Same rows, new files: readers of the change feed must not see new data.
        add.data_change = false;
        match self.commit("OPTIMIZE", vec![add], chosen.clone()).await {
            Ok(version) => Ok(Some(Compacted {
                files_merged: chosen.len(),
                rows,
                version,
            })),
            // The merged file is an orphan now; vacuum removes it.
            Err(C360Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes data files that the current snapshot does not name and that are older than
    /// `retention`; returns how many.
    pub async fn vacuum(&self, retention: Duration) -> Result<usize> {
        let snapshot = self.refresh().await?;
        let cutoff = now_ms() - retention.as_millis() as i64;
        let mut deleted = 0;
        for (name, _, modified) in self.storage().list_objects(self.dir()).await? {
            if name == LOG_DIR
                || !name.ends_with(".parquet")
                || snapshot.contains(&name)
                || modified > cutoff
            {
                continue;
            }
            self.storage()
                .delete(&format!("{}/{name}", self.dir()))
                .await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::storage::Storage;

    fn batch(from: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(from..from + 10))],
        )
        .unwrap()
    }

    async fn sum(storage: &Storage, table: Arc<LandedTable>) -> i64 {
        let ctx = SessionContext::new();
        storage.register(&ctx);
        ctx.register_table("t", crate::storage::provider::LandedProvider::new(table))
            .unwrap();
        let batches = ctx
            .sql("SELECT sum(n) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    }

    #[tokio::test]
    async fn compaction_keeps_the_rows_and_vacuum_deletes_only_unreferenced_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let schema = batch(0).schema();
        let table = Arc::new(LandedTable::create(&storage, "t", schema).await.unwrap());
        for i in 0..20 {
            table.append(&[batch(i * 10)]).await.unwrap();
        }
        let before = sum(&storage, table.clone()).await;
        assert!(
            table.compact(30).await.unwrap().is_none(),
            "below the threshold"
        );

        let compacted = table.compact(16).await.unwrap().unwrap();
        assert_eq!((compacted.files_merged, compacted.rows), (20, 200));
        assert_eq!(table.snapshot().files.len(), 1);
        assert_eq!(sum(&storage, table.clone()).await, before);

        // Another handle (another process) opened before an append: it catches up before
        // choosing files, so it merges the compacted file and the new one.
        let other = LandedTable::open(&storage, "t").await.unwrap().unwrap();
        table.append(&[batch(1000)]).await.unwrap();
        let parquet_files = || {
            std::fs::read_dir(dir.path().join("tables/t"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "parquet")
                })
                .count()
        };
        assert_eq!(parquet_files(), 22);
        let again = other.compact(2).await.unwrap().unwrap();
        assert_eq!((again.files_merged, again.rows), (2, 210));

        // Nothing is old enough yet; with no retention, only the live files stay.
        assert_eq!(table.vacuum(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(table.vacuum(Duration::ZERO).await.unwrap(), 22);
        assert_eq!(table.refresh().await.unwrap().files.len(), 1);
        assert_eq!(parquet_files(), 1);
        assert_eq!(
            sum(&storage, table.clone()).await,
            before + (1000..1010).sum::<i64>()
        );
        let reopened = Arc::new(LandedTable::open(&storage, "t").await.unwrap().unwrap());
        assert_eq!(
            sum(&storage, reopened).await,
            before + (1000..1010).sum::<i64>()
        );
    }
}
