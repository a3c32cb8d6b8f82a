//! Landed tables: commits, snapshots, races and crashes, on a real local root.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
    ]))
}

fn batch(from: i64, rows: i64) -> RecordBatch {
    let ids: Vec<String> = (from..from + rows).map(|i| format!("id-{i}")).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from_iter_values(from..from + rows)),
        ],
    )
    .unwrap()
}

async fn root() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), &BTreeMap::new())
        .await
        .unwrap();
    (dir, storage)
}

async fn count(storage: &Storage, table: Arc<LandedTable>) -> i64 {
    let ctx = SessionContext::new();
    storage.register(&ctx);
    ctx.register_table("t", crate::storage::provider::LandedProvider::new(table))
        .unwrap();
    let batches = ctx
        .sql("SELECT count(*), count(DISTINCT id) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let total = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let distinct = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(total, distinct, "a row was committed twice");
    total
}

#[tokio::test]
async fn appends_are_visible_after_reopen_and_from_sql() {
    let (_dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    let first = table.append(&[batch(0, 10)]).await.unwrap();
    assert_eq!((first.version, first.rows), (1, 10));
    table.append(&[batch(10, 5), batch(15, 5)]).await.unwrap();
    assert_eq!(table.snapshot().row_count(), Some(20));

    let reopened = LandedTable::open(&storage, "t").await.unwrap().unwrap();
    assert_eq!(reopened.snapshot().version, 2);
    assert_eq!(count(&storage, Arc::new(reopened)).await, 20);
}

#[tokio::test]
async fn a_second_create_is_refused_and_open_or_create_checks_columns() {
    let (_dir, storage) = root().await;
    LandedTable::create(&storage, "t", schema()).await.unwrap();
    let err = LandedTable::create(&storage, "t", schema())
        .await
        .unwrap_err();
    assert!(matches!(err, C360Error::AlreadyExists(_)), "{err}");
    let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
    let err = LandedTable::open_or_create(&storage, "t", other)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("id Utf8"), "{err}");
    assert!(
        LandedTable::open(&storage, "missing")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn concurrent_appenders_in_two_handles_lose_nothing() {
    let (_dir, storage) = root().await;
    LandedTable::create(&storage, "t", schema()).await.unwrap();
    // Two handles stand for two processes: each has its own cache and commit lock, so
    // they race for every version and only put-if-absent keeps them apart.
    let a = Arc::new(LandedTable::open(&storage, "t").await.unwrap().unwrap());
    let b = Arc::new(LandedTable::open(&storage, "t").await.unwrap().unwrap());
    let mut tasks = Vec::new();
    for writer in 0..8i64 {
        let table = if writer % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..10i64 {
                table
                    .append(&[batch((writer * 10 + i) * 3, 3)])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reopened = Arc::new(LandedTable::open(&storage, "t").await.unwrap().unwrap());
    assert_eq!(reopened.snapshot().version, 80);
    assert_eq!(reopened.snapshot().files.len(), 80);
    assert_eq!(count(&storage, reopened).await, 240);
    // The handles catch up with each other's commits when asked.
    assert_eq!(a.refresh().await.unwrap().version, 80);
}

#[tokio::test]
async fn files_without_a_log_entry_are_invisible() {
    let (dir, storage) = root().await;
    let table = Arc::new(LandedTable::create(&storage, "t", schema()).await.unwrap());
    table.append(&[batch(0, 4)]).await.unwrap();
    // A crash between writing the data and publishing the log entry leaves this.
    let orphan = table.write_file(&[batch(100, 50)]).await.unwrap();
    assert!(dir.path().join("tables/t").join(&orphan.path).is_file());
    assert_eq!(count(&storage, table.clone()).await, 4);
    let reopened = Arc::new(LandedTable::open(&storage, "t").await.unwrap().unwrap());
    assert_eq!(count(&storage, reopened).await, 4);
}

#[tokio::test]
async fn a_log_entry_written_by_another_process_is_seen_by_the_next_scan() {
    let (_dir, storage) = root().await;
    let reader = Arc::new(LandedTable::create(&storage, "t", schema()).await.unwrap());
    let writer = LandedTable::open(&storage, "t").await.unwrap().unwrap();
    assert_eq!(count(&storage, reader.clone()).await, 0);
    writer.append(&[batch(0, 7)]).await.unwrap();
    assert_eq!(count(&storage, reader).await, 7);
}

#[tokio::test]
async fn rewrites_of_a_file_removed_meanwhile_conflict() {
    let (_dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    table.append(&[batch(0, 2)]).await.unwrap();
    let path = table.snapshot().files.values().next().unwrap().path.clone();
    table
        .commit("DELETE", Vec::new(), vec![path.clone()])
        .await
        .unwrap();
    let err = table
        .commit("DELETE", Vec::new(), vec![path])
        .await
        .unwrap_err();
    assert!(matches!(err, C360Error::Conflict(_)), "{err}");
}

#[tokio::test]
async fn conform_names_the_column_that_does_not_fit() {
    let (_dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec![Some("a")])),
            Arc::new(StringArray::from(vec![Some("not a number")])),
        ],
    )
    .unwrap();
    let err = table.conform(&bad).unwrap_err();
    assert!(err.to_string().contains("column n"), "{err}");
}

/// Interop: Python's `deltalake` package (delta-rs, installed by `.ci/run`) reads a table
/// c360 wrote, after appends and a remove, and gets the same rows and types.
#[tokio::test]
async fn python_deltalake_reads_what_c360_wrote() {
    use datafusion::arrow::array::{Decimal128Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::TimeUnit;
    let (dir, storage) = root().await;
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
        Field::new("at", utc.clone(), true),
        Field::new("price", DataType::Decimal128(12, 2), true),
    ]));
    let table = LandedTable::create(&storage, "interop", schema.clone())
        .await
        .unwrap();
    let rows = |from: i64| {
        RecordBatch::try_new(
            table.schema(),
            vec![
                Arc::new(StringArray::from(vec![
                    format!("a{from}"),
                    format!("b{from}"),
                ])),
                Arc::new(Int64Array::from(vec![Some(from), None])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_700_000_000_000_000 + from, 0])
                        .with_timezone("UTC"),
                ),
                Arc::new(
                    Decimal128Array::from(vec![Some(1999 + from as i128), None])
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    };
    table.append(&[rows(1)]).await.unwrap();
    table.append(&[rows(2)]).await.unwrap();
    table.append(&[rows(3)]).await.unwrap();
    // Drop the second file: readers must honour `remove`.
    let second = table.snapshot().files.values().nth(1).unwrap().path.clone();
    table
        .commit("DELETE", Vec::new(), vec![second])
        .await
        .unwrap();

    let script = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
data = t.to_pyarrow_table().to_pylist()
rows = sorted([r["id"], r["n"], r["at"].isoformat() if r["at"] else None,
               str(r["price"]) if r["price"] is not None else None] for r in data)
print(json.dumps({"version": t.version(), "rows": rows}), flush=True)
# Skip interpreter teardown: under load, delta-rs' runtime threads sometimes abort it
# ("terminate called without an active exception") after the answer is out.
import os
os._exit(0)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("tables/interop"))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python deltalake failed (pip install deltalake pyarrow, see .ci/run): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["version"], 4);
    let expected = serde_json::json!([
        ["a1", 1, "2023-11-14T22:13:20.000001+00:00", "20.00"],
        ["a3", 3, "2023-11-14T22:13:20.000003+00:00", "20.02"],
        ["b1", null, "1970-01-01T00:00:00+00:00", null],
        ["b3", null, "1970-01-01T00:00:00+00:00", null],
    ]);
    assert_eq!(got["rows"], expected);
}

#[tokio::test]
async fn opening_uses_the_checkpoint_and_falls_back_to_the_log() {
    let (dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    for i in 0..205 {
        table.append(&[batch(i, 1)]).await.unwrap();
    }
    // Checkpoints are written beside the commits, not by them.
    table.checkpoints_settled().await;
    let last = dir.path().join("tables/t/_delta_log/_last_checkpoint");
    assert!(last.is_file(), "a checkpoint is written every 100 versions");
    // Remove one commit that the checkpoint (version 200) covers: only a reader of the
    // checkpoint still sees the whole table.
    let log = dir.path().join("tables/t/_delta_log");
    std::fs::remove_file(log.join(delta::commit_name(150))).unwrap();
    let reopened = LandedTable::open(&storage, "t").await.unwrap().unwrap();
    assert_eq!(reopened.snapshot().version, 205);
    assert_eq!(reopened.snapshot().row_count(), Some(205));
    // A checkpoint pointer that does not parse is ignored: the full replay stops at the gap.
    std::fs::write(&last, b"{not json").unwrap();
    let replayed = LandedTable::open(&storage, "t").await.unwrap().unwrap();
    assert_eq!(replayed.snapshot().version, 149);
}

/// A commit that asks for a checkpoint does not wait for it: while a slow checkpoint is
/// being written, commits go on, and the newest request waiting replaces older ones (one
/// writer at a time, so `_last_checkpoint` never goes back).
#[tokio::test]
async fn checkpoints_are_written_beside_commits_newest_last() {
    let (dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    // Hold the writer's slot as a running checkpoint would: commits must not block on it.
    lock_slot(&table.checkpoints).running = true;
    for i in 0..205 {
        table.append(&[batch(i, 1)]).await.unwrap();
    }
    let last = dir.path().join("tables/t/_delta_log/_last_checkpoint");
    assert!(
        !last.exists(),
        "no checkpoint is written by the commit itself"
    );
    assert_eq!(
        lock_slot(&table.checkpoints)
            .pending
            .as_ref()
            .map(|s| s.version),
        Some(200),
        "the newest request replaces the older one"
    );
    // The slot frees up: the next request starts the writer, which writes the newest.
    lock_slot(&table.checkpoints).running = false;
    for i in 205..300 {
        table.append(&[batch(i, 1)]).await.unwrap();
    }
    table.checkpoints_settled().await;
    let pointer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(pointer["version"], 300);
    // Opening reads it: without the checkpoint, the removed commit would stop the replay.
    std::fs::remove_file(
        dir.path()
            .join("tables/t/_delta_log")
            .join(delta::commit_name(7)),
    )
    .unwrap();
    let reopened = LandedTable::open(&storage, "t").await.unwrap().unwrap();
    assert_eq!(reopened.snapshot().row_count(), Some(300));
}

/// Each commit's snapshot shares the file entries of the one before: deriving it costs
/// pointers, not copies of every file's path and stats, however many files the table has.
#[tokio::test]
async fn a_commit_shares_the_file_entries_of_the_previous_snapshot() {
    let (_dir, storage) = root().await;
    let table = LandedTable::create(&storage, "t", schema()).await.unwrap();
    for i in 0..3 {
        table.append(&[batch(i, 1)]).await.unwrap();
    }
    let before = table.snapshot();
    table.append(&[batch(3, 1)]).await.unwrap();
    let after = table.snapshot();
    assert_eq!(after.files.len(), 4);
    for (key, add) in &before.files {
        assert!(Arc::ptr_eq(add, &after.files[key]), "file {key} was copied");
    }
}

/// Interop with checkpoints: delta-rs opens a table through the checkpoint c360 wrote at
/// version 100, the commits before it deleted so that it cannot replay them instead.
#[tokio::test]
async fn python_deltalake_reads_through_a_c360_checkpoint() {
    let (dir, storage) = root().await;
    let table = LandedTable::create(&storage, "cp", schema()).await.unwrap();
    for i in 0..102 {
        table.append(&[batch(i * 2, 2)]).await.unwrap();
    }
    table.checkpoints_settled().await;
    let log = dir.path().join("tables/cp/_delta_log");
    assert!(
        log.join(format!("{:020}.checkpoint.parquet", 100))
            .is_file()
    );
    for version in 0..100 {
        std::fs::remove_file(log.join(delta::commit_name(version))).unwrap();
    }
    let script = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
data = t.to_pyarrow_table().to_pylist()
print(json.dumps({"version": t.version(), "rows": len(data),
                  "sum": sum(r["n"] for r in data)}), flush=True)
import os
os._exit(0)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("tables/cp"))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python deltalake failed (pip install deltalake pyarrow, see .ci/run): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["version"], 102);
    assert_eq!(got["rows"], 204);
    assert_eq!(got["sum"], (0..204).sum::<i64>());
    // And c360 itself reopens it the same way.
    let reopened = LandedTable::open(&storage, "cp").await.unwrap().unwrap();
    assert_eq!(reopened.snapshot().row_count(), Some(204));
}

#[tokio::test]
async fn filters_prune_files_by_their_parquet_statistics() {
    let (_dir, storage) = root().await;
    let table = Arc::new(LandedTable::create(&storage, "t", schema()).await.unwrap());
    for i in 0..3 {
        table.append(&[batch(i * 100, 10)]).await.unwrap();
    }
    let ctx = SessionContext::new();
    storage.register(&ctx);
    ctx.register_table("t", crate::storage::provider::LandedProvider::new(table))
        .unwrap();
    let count = ctx
        .sql("SELECT count(*) FROM t WHERE n >= 200")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let count = count[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(count, 10);
    let plan = ctx
        .sql("EXPLAIN ANALYZE SELECT * FROM t WHERE n >= 200")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    // Only the last file's row group can hold n >= 200.
    assert!(
        text.contains("row_groups_pruned_statistics=3 total → 1 matched"),
        "{text}"
    );
}
