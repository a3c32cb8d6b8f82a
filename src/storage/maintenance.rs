//! Upkeep of landed tables: compaction merges the many small files that group commits and
//! small loads leave into one, and vacuum deletes the files no snapshot names any more
//! once they are older than the retention period (readers of older versions, and commits
//! still being written, are given that long).
//!
//! Both are ordinary commits or deletions of unreferenced files, so they run beside
//! appends: an append never conflicts with a compaction, and two compactions of the same
//! files cannot both commit (the second finds its files removed and gives up).
//!
//! Compaction shares a 2-core machine with the collector's group commits, whose latency is
//! what clients wait for. So it takes a bounded amount of input per round (bounded memory,
//! a bounded fsync at the end), streams it file by file through one Parquet writer rather
//! than holding every row, and does all its CPU work (decode, cast, encode) on a thread of
//! its own at a lower scheduling priority: the async workers never run it, and when both
//! cores are busy the commit path goes first.

use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterPropertiesBuilder;

use super::delta::Add;
use super::delta::{LOG_DIR, StatsBuilder};
use super::table::{LandedTable, conform_batch, data_file_name, data_file_properties, now_ms};
use crate::error::{C360Error, Result};

/// Files smaller than this are worth merging.
pub const SMALL_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Compact once a table has this many small files.
pub const COMPACT_AT_FILES: usize = 16;
/// Unreferenced files are kept this long: time for readers of older versions (and for
/// commits still writing their files) before vacuum deletes them.
pub const VACUUM_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// At most this many bytes of small files are merged in one compaction by default
/// (`[maintenance] compact_max_mb`): it bounds the round's memory and its final fsync.
pub const COMPACT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The merged file reaches a local disk at most this fast (see `Storage::put_paced`): 64 MiB
/// in two seconds, far above what a collector's files add per round, and a trickle that
/// group commits' fsyncs do not queue behind.
const COMPACT_WRITE_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;
/// Rows per row group of a merged file (see `merge`).
const COMPACT_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Input files read ahead of the merging thread: enough to keep it busy, few enough that
/// memory holds a handful of small files at most.
const READ_AHEAD: usize = 2;
/// The nice value of the merging thread: the commit path (nice 0) gets about ten times its
/// share of a busy core, yet compaction still progresses under sustained load.
const COMPACT_NICE: i32 = 10;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    pub files_merged: usize,
    pub rows: usize,
    pub version: u64,
    /// Small files this round left for the next (over its byte budget).
    pub small_files_left: usize,
}

impl LandedTable {
    /// Merges the table's small files (oldest first, at most `max_bytes` of them) into one
    /// when there are at least `min_files`; `None` when there was nothing to do or a
    /// concurrent rewrite got there first.
    pub async fn compact(&self, min_files: usize, max_bytes: u64) -> Result<Option<Compacted>> {
        let snapshot = self.refresh().await?;
        let mut chosen = Vec::new();
        let mut bytes = 0;
        let mut small_files_left = 0;
        for add in snapshot.files.values() {
            if add.size >= SMALL_FILE_BYTES {
                continue;
            }
            if bytes + add.size <= max_bytes {
                bytes += add.size;
                chosen.push(add.path.clone());
            } else {
                small_files_left += 1;
            }
        }
        if chosen.len() < min_files.max(2) {
            return Ok(None);
        }
        let file = data_file_name();
        let relative = format!("{}/{file}", self.dir());
        let (inputs, merged) = tokio::sync::mpsc::channel(READ_AHEAD);
        let (done, result) = tokio::sync::oneshot::channel();
        let (schema, table) = (self.schema(), self.name().to_string());
        std::thread::Builder::new()
            .name(format!("c360-compact-{table}"))
            .spawn(move || {
                lower_priority();
                let _ = done.send(merge(&table, schema, merged, bytes as usize));
            })
            .map_err(|e| C360Error::io(&relative, e))?;
        for path in &chosen {
            let input = format!("{}/{path}", self.dir());
            let bytes = self.storage().get(&input).await?;
            if inputs.send((input, bytes)).await.is_err() {
                // The merge stopped on an error, which `result` carries.
                break;
            }
        }
        drop(inputs);
        let (buffer, stats, rows) = result.await.map_err(|_| {
            C360Error::io(
                &relative,
                std::io::Error::other("the compaction thread died"),
            )
        })??;
        let size = buffer.len() as u64;
        self.storage()
            .put_paced(&relative, buffer, COMPACT_WRITE_BYTES_PER_SEC)
            .await?;
        let add = Add {
            path: file,
            partition_values: Default::default(),
            size,
            modification_time: now_ms(),
            // Same rows, new files: readers of the change feed must not see new data.
            data_change: false,
            stats: Some(stats),
        };
        match self.commit("OPTIMIZE", vec![add], chosen.clone()).await {
            Ok(version) => Ok(Some(Compacted {
                files_merged: chosen.len(),
                rows,
                version,
                small_files_left,
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

/// Decodes each input file as it arrives, casts it to the table's columns and appends it to
/// one Parquet file: memory holds one input file and the writer's current row group, never
/// the whole merge. Gives the encoded file, its Delta stats and its row count.
fn merge(
    table: &str,
    schema: SchemaRef,
    mut inputs: tokio::sync::mpsc::Receiver<(String, Bytes)>,
    input_bytes: usize,
) -> Result<(Vec<u8>, String, usize)> {
    // The output is about as large as the inputs: one allocation up front, rather than a
    // buffer that doubles (and is copied) several times on the way to tens of MiB.
    let mut buffer = Vec::with_capacity(input_bytes + (1 << 20));
    let mut stats = StatsBuilder::new(&schema);
    // Row groups of a bounded size: the writer holds the current one encoded in memory,
    // which would otherwise be the whole merge (the default is a million rows).
    let properties = WriterPropertiesBuilder::from(data_file_properties())
        .set_max_row_group_row_count(Some(COMPACT_ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema.clone(), Some(properties))
        .map_err(|e| C360Error::parquet(table, e))?;
    while let Some((input, bytes)) = inputs.blocking_recv() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .map_err(|e| C360Error::parquet(&input, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| C360Error::arrow(&input, e))?;
            let batch = conform_batch(&schema, &batch).map_err(|misfit| {
                C360Error::InvalidArgument(format!("table {table}: {input}: {misfit}"))
            })?;
            stats.add(&batch);
            writer
                .write(&batch)
                .map_err(|e| C360Error::parquet(&input, e))?;
        }
    }
    writer.close().map_err(|e| C360Error::parquet(table, e))?;
    let rows = stats.rows();
    Ok((buffer, stats.finish(), rows))
}

/// Lowers the calling thread's CPU priority (Linux: per-thread nice value), so that a merge
/// yields the cores to the commit path whenever both are busy. Best effort: where it is not
/// possible the merge simply runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions, and setpriority on our own thread id changes
        // nothing but this thread's nice value; its failure is harmless and ignored.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMPACT_NICE);
        }
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

    /// One round merges at most `max_bytes` of small files, oldest first; the rest wait for
    /// the next rounds, so each round's memory and final fsync stay bounded.
    #[tokio::test]
    async fn a_compaction_round_merges_at_most_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let table = Arc::new(
            LandedTable::create(&storage, "t", batch(0).schema())
                .await
                .unwrap(),
        );
        for i in 0..12 {
            table.append(&[batch(i * 10)]).await.unwrap();
        }
        let sizes: Vec<u64> = table.snapshot().files.values().map(|a| a.size).collect();
        let oldest: Vec<String> = table
            .snapshot()
            .files
            .values()
            .take(5)
            .map(|a| a.path.clone())
            .collect();
        let budget = sizes[..5].iter().sum::<u64>();
        let done = table.compact(2, budget).await.unwrap().unwrap();
        assert_eq!((done.files_merged, done.rows), (5, 50));
        // The other seven are over the budget: upkeep runs the next round at once.
        assert_eq!(done.small_files_left, 7);
        let snapshot = table.snapshot();
        assert_eq!(snapshot.files.len(), 12 - 5 + 1);
        assert!(
            oldest.iter().all(|path| !snapshot.contains(path)),
            "the oldest go first"
        );
        // The next rounds take the rest.
        while table.compact(2, budget).await.unwrap().is_some() {}
        assert!(table.snapshot().files.len() <= 3);
        assert_eq!(sum(&storage, table.clone()).await, (0..120).sum::<i64>());
    }

    /// A merged file is written in bounded row groups: the writer holds one in memory, so
    /// the merge's memory does not grow with its size.
    #[tokio::test]
    async fn merged_files_have_bounded_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let schema = batch(0).schema();
        let table = Arc::new(
            LandedTable::create(&storage, "t", schema.clone())
                .await
                .unwrap(),
        );
        for i in 0..3 {
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(
                    i * 100_000..(i + 1) * 100_000,
                ))],
            )
            .unwrap();
            table.append(&[rows]).await.unwrap();
        }
        table.compact(2, COMPACT_MAX_BYTES).await.unwrap().unwrap();
        let merged = table.snapshot().files.values().next().unwrap().path.clone();
        let bytes = storage.get(&format!("tables/t/{merged}")).await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let full = COMPACT_ROW_GROUP_ROWS as i64;
        assert_eq!(groups, vec![full, full, 300_000 - 2 * full]);
    }

    #[test]
    fn the_merging_thread_runs_at_a_lower_priority() {
        let nice = std::thread::spawn(|| {
            lower_priority();
            // SAFETY: getpriority reads this thread's nice value; no pointers involved.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .join()
        .unwrap();
        assert_eq!(nice, COMPACT_NICE);
        // SAFETY: as above, for the test's own thread, which must be unaffected.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(own, 0);
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
            table
                .compact(30, COMPACT_MAX_BYTES)
                .await
                .unwrap()
                .is_none(),
            "below the threshold"
        );

        let compacted = table.compact(16, COMPACT_MAX_BYTES).await.unwrap().unwrap();
        assert_eq!((compacted.files_merged, compacted.rows), (20, 200));
        assert_eq!(table.snapshot().files.len(), 1);
        // The merged file's stats, gathered while streaming, cover every input file.
        let stats = table
            .snapshot()
            .files
            .values()
            .next()
            .unwrap()
            .stats
            .clone();
        let stats: serde_json::Value = serde_json::from_str(&stats.unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 200);
        assert_eq!(
            (
                stats["minValues"]["n"].clone(),
                stats["maxValues"]["n"].clone()
            ),
            (0.into(), 199.into())
        );
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
        let again = other.compact(2, COMPACT_MAX_BYTES).await.unwrap().unwrap();
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
