//! Deleting rows from a landed table, copy-on-write: each file with a matching row is
//! rewritten without it, and one commit swaps the rewritten files for the old ones. The old
//! files leave the table at once and the disk at the next vacuum past the retention period,
//! which is how an erasure reaches the bytes, not only the queries.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::physical_expr::PhysicalExpr;

use super::table::LandedTable;
use crate::error::{C360Error, Result};

/// Attempts before a delete that keeps losing to compaction gives up.
const ATTEMPTS: usize = 3;

impl LandedTable {
    /// Deletes the rows for which `predicate` is true (NULL keeps the row, as in SQL) in one
    /// commit; returns how many.
    pub async fn delete_matching(&self, predicate: Arc<dyn PhysicalExpr>) -> Result<u64> {
        for _ in 1..ATTEMPTS {
            match self.try_delete(&predicate).await {
                // A compaction replaced a file we rewrote: start again from its result.
                Err(C360Error::Conflict(_)) => continue,
                other => return other,
            }
        }
        self.try_delete(&predicate).await
    }

    async fn try_delete(&self, predicate: &Arc<dyn PhysicalExpr>) -> Result<u64> {
        let snapshot = self.refresh().await?;
        let mut deleted = 0u64;
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for add in snapshot.files.values() {
            let relative = format!("{}/{}", self.dir(), add.path);
            let batches = self.storage().get_parquet(&relative).await?;
            let mut kept = Vec::with_capacity(batches.len());
            let mut matched = 0u64;
            for batch in &batches {
                let batch = self.conform(batch)?;
                let hits = evaluate(predicate, &batch, &relative)?;
                let count = hits.true_count() as u64;
                if count == 0 {
                    kept.push(batch);
                    continue;
                }
                matched += count;
                // Keep what is not a hit: false or NULL.
                let keep: BooleanArray = (0..hits.len())
                    .map(|i| Some(!(hits.is_valid(i) && hits.value(i))))
                    .collect();
                kept.push(
                    filter_record_batch(&batch, &keep)
                        .map_err(|e| C360Error::arrow(&relative, e))?,
                );
            }
            if matched == 0 {
                continue;
            }
            deleted += matched;
            removes.push(add.path.clone());
            if kept.iter().any(|b| b.num_rows() > 0) {
                adds.push(self.write_file(&kept).await?);
            }
        }
        if removes.is_empty() {
            return Ok(0);
        }
        self.commit("DELETE", adds, removes).await?;
        Ok(deleted)
    }
}

fn evaluate(
    predicate: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
    file: &str,
) -> Result<BooleanArray> {
    let value = predicate.evaluate(batch)?;
    let array = value.into_array(batch.num_rows())?;
    array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| {
            C360Error::InvalidArgument(format!(
                "{file}: the DELETE condition is not a boolean ({})",
                array.data_type()
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::storage::Storage;
    use crate::storage::provider::LandedProvider;

    const ERASED: &str = "erase.me@example.org";

    fn batch(emails: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("email", DataType::Utf8, true),
        ]));
        let ids: Vec<String> = emails
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e}-{i}"))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(emails.to_vec())),
            ],
        )
        .unwrap()
    }

    /// Whether any file under `dir` (data files and the log) holds `needle`.
    fn bytes_contain(dir: &std::path::Path, needle: &str) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                return bytes_contain(&path, needle);
            }
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    }

    async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
        ctx.sql(query).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn delete_rewrites_only_affected_files_and_vacuum_erases_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let table = Arc::new(
            LandedTable::create(&storage, "people", batch(&[]).schema())
                .await
                .unwrap(),
        );
        table
            .append(&[batch(&["a@x.org", ERASED, "b@x.org"])])
            .await
            .unwrap();
        table.append(&[batch(&["c@x.org"])]).await.unwrap();
        table.append(&[batch(&[ERASED, ERASED])]).await.unwrap();
        let untouched = table.snapshot().files.values().nth(1).unwrap().path.clone();
        let table_dir = dir.path().join("tables/people");
        assert!(
            bytes_contain(&table_dir, ERASED),
            "the scan must see plain values"
        );

        let ctx = SessionContext::new();
        storage.register(&ctx);
        ctx.register_table("people", LandedProvider::new(table.clone()))
            .unwrap();
        // Planning alone deletes nothing.
        sql(
            &ctx,
            &format!("EXPLAIN DELETE FROM people WHERE email = '{ERASED}'"),
        )
        .await;
        assert_eq!(table.refresh().await.unwrap().version, 3);

        let result = sql(
            &ctx,
            &format!("DELETE FROM people WHERE email = '{ERASED}'"),
        )
        .await;
        let deleted = result[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0);
        assert_eq!(deleted, 3);
        let snapshot = table.snapshot();
        assert_eq!(snapshot.version, 4, "one commit");
        assert!(
            snapshot.contains(&untouched),
            "a file without matches is not rewritten"
        );
        assert_eq!(
            snapshot.files.len(),
            2,
            "the all-matching file is dropped, not rewritten"
        );
        let left = sql(&ctx, "SELECT email FROM people ORDER BY email").await;
        let left = datafusion::arrow::util::pretty::pretty_format_batches(&left)
            .unwrap()
            .to_string();
        assert!(
            left.contains("a@x.org") && left.contains("b@x.org") && left.contains("c@x.org"),
            "{left}"
        );
        assert!(!left.contains(ERASED), "{left}");

        // Queries no longer see the value, but the old files are still on disk until vacuum.
        assert!(bytes_contain(&table_dir, ERASED));
        table.vacuum(Duration::ZERO).await.unwrap();
        assert!(
            !bytes_contain(&table_dir, ERASED),
            "erased bytes left in {}",
            table_dir.display()
        );
    }
}
