//! `actions` and `trigger_runs`, read from the queue at each scan; `claim_actions` and
//! `ack_actions`, the pull API for consumers that fetch their work over SQL (they change the
//! queue when their plan executes, never while it is planned); and the rows of
//! `EXPLAIN TRIGGER`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use crate::actions::policy::Decision;
use crate::actions::{Action, Queue, RunOutcome, TriggerRun};
use crate::error::{C360Error, Result};

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn micros(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values).with_timezone("UTC"))
}

pub fn actions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("action_id", DataType::UInt64, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, true),
        Field::new("idempotency_key", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("created_at", timestamp(), false),
        Field::new("available_at", timestamp(), false),
        Field::new("attempts", DataType::UInt32, false),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("delivered_at", timestamp(), true),
    ]))
}

pub fn actions_batch(actions: &[Action]) -> DfResult<RecordBatch> {
    let text = |f: fn(&Action) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(actions.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            actions.iter().map(|a| a.action_id),
        )),
        text(|a| &a.trigger),
        text(|a| &a.profile_id),
        text(|a| &a.channel),
        Arc::new(StringArray::from_iter(
            actions.iter().map(|a| a.payload.as_deref()),
        )),
        text(|a| &a.idempotency_key),
        text(|a| a.status.as_str()),
        Arc::new(StringArray::from_iter(
            actions.iter().map(|a| a.reason.as_deref()),
        )),
        micros(actions.iter().map(|a| Some(a.created_at))),
        micros(actions.iter().map(|a| Some(a.available_at))),
        Arc::new(UInt32Array::from_iter_values(
            actions.iter().map(|a| a.attempts),
        )),
        Arc::new(StringArray::from_iter(
            actions.iter().map(|a| a.last_error.as_deref()),
        )),
        micros(actions.iter().map(|a| a.delivered_at)),
    ];
    Ok(RecordBatch::try_new(actions_schema(), columns)?)
}

pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trigger", DataType::Utf8, false),
        Field::new("run_id", DataType::UInt64, false),
        Field::new("started_at", timestamp(), false),
        Field::new("duration_ms", DataType::UInt64, false),
        Field::new("candidates", DataType::UInt64, false),
        Field::new("enqueued", DataType::UInt64, false),
        Field::new("held_out", DataType::UInt64, false),
        Field::new("suppressed_by_reason", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn runs_batch(runs: &[TriggerRun]) -> DfResult<RecordBatch> {
    let suppressed: Vec<String> = runs
        .iter()
        .map(|r| {
            let sorted: std::collections::BTreeMap<_, _> = r.suppressed.iter().collect();
            serde_json::to_string(&sorted).unwrap_or_default()
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            runs.iter().map(|r| &r.trigger),
        )),
        Arc::new(UInt64Array::from_iter_values(runs.iter().map(|r| r.run_id))),
        micros(runs.iter().map(|r| Some(r.started_at))),
        Arc::new(UInt64Array::from_iter_values(
            runs.iter().map(|r| r.duration_ms),
        )),
        Arc::new(UInt64Array::from_iter_values(
            runs.iter().map(|r| r.candidates),
        )),
        Arc::new(UInt64Array::from_iter_values(
            runs.iter().map(|r| r.enqueued),
        )),
        Arc::new(UInt64Array::from_iter_values(
            runs.iter().map(|r| r.held_out),
        )),
        Arc::new(StringArray::from(suppressed)),
        Arc::new(StringArray::from_iter(
            runs.iter().map(|r| r.error.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(runs_schema(), columns)?)
}

/// What a table built from the queue reads at scan time.
#[derive(Debug, Clone)]
enum Source {
    Actions,
    Runs,
    /// `claim_actions(channel, n)`: claims when its plan executes, once per execution.
    Claim {
        channel: String,
        limit: usize,
    },
    /// `ack_actions('1,2,3')`.
    Ack {
        ids: Vec<u64>,
    },
}

pub struct QueueTable {
    queue: Arc<Queue>,
    source: Source,
    visibility_micros: i64,
}

impl std::fmt::Debug for QueueTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueTable({:?})", self.source)
    }
}

fn ack_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "acknowledged",
        DataType::UInt64,
        false,
    )]))
}

fn queue_error(e: C360Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl QueueTable {
    pub fn actions(queue: Arc<Queue>) -> QueueTable {
        QueueTable {
            queue,
            source: Source::Actions,
            visibility_micros: 0,
        }
    }

    pub fn runs(queue: Arc<Queue>) -> QueueTable {
        QueueTable {
            queue,
            source: Source::Runs,
            visibility_micros: 0,
        }
    }

    fn read(&self) -> DfResult<RecordBatch> {
        let now = chrono::Utc::now().timestamp_micros();
        match &self.source {
            Source::Actions => actions_batch(&self.queue.actions().map_err(queue_error)?),
            Source::Runs => runs_batch(&self.queue.runs().map_err(queue_error)?),
            Source::Claim { channel, limit } => actions_batch(
                &self
                    .queue
                    .claim(channel, *limit, now, self.visibility_micros)
                    .map_err(queue_error)?,
            ),
            Source::Ack { ids } => {
                let acked = self.queue.ack(ids, now).map_err(queue_error)?;
                Ok(RecordBatch::try_new(
                    ack_schema(),
                    vec![Arc::new(UInt64Array::from(vec![acked as u64]))],
                )?)
            }
        }
    }
}

#[async_trait]
impl TableProvider for QueueTable {
    fn schema(&self) -> SchemaRef {
        match self.source {
            Source::Actions | Source::Claim { .. } => actions_schema(),
            Source::Runs => runs_schema(),
            Source::Ack { .. } => ack_schema(),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut table = self.copy();
        if let (Source::Claim { limit: claimed, .. }, Some(limit)) = (&mut table.source, limit) {
            // A LIMIT right above the claim caps it: rows claimed and then cut off would
            // stay invisible to every consumer until the visibility timeout.
            *claimed = (*claimed).min(limit);
        }
        if matches!(self.source, Source::Claim { .. } | Source::Ack { .. }) {
            // Claims and acks change the queue, so they happen when the plan runs, not when
            // it is made: `EXPLAIN` or a client's `Describe` must not hide actions.
            return Ok(Arc::new(StreamingTableExec::try_new(
                self.schema(),
                vec![Arc::new(Deferred {
                    schema: self.schema(),
                    table,
                })],
                projection,
                Vec::new(),
                false,
                None,
            )?));
        }
        let batch = tokio::task::spawn_blocking(move || table.read())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

impl QueueTable {
    fn copy(&self) -> QueueTable {
        QueueTable {
            queue: Arc::clone(&self.queue),
            source: self.source.clone(),
            visibility_micros: self.visibility_micros,
        }
    }
}

/// A claim or an ack, made each time its plan is executed.
#[derive(Debug)]
struct Deferred {
    schema: SchemaRef,
    table: QueueTable,
}

impl PartitionStream for Deferred {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let table = self.table.copy();
        let batch = async move {
            tokio::task::spawn_blocking(move || table.read())
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(batch),
        ))
    }
}

/// `claim_actions('email', 100)` and `ack_actions('17,18')`.
#[derive(Debug)]
pub struct QueueFunction {
    queue: Arc<Queue>,
    claim: bool,
    visibility_micros: i64,
}

impl QueueFunction {
    pub fn claim(queue: Arc<Queue>, visibility_micros: i64) -> QueueFunction {
        QueueFunction {
            queue,
            claim: true,
            visibility_micros,
        }
    }

    pub fn ack(queue: Arc<Queue>) -> QueueFunction {
        QueueFunction {
            queue,
            claim: false,
            visibility_micros: 0,
        }
    }
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value),
        _ => None,
    }
}

impl TableFunctionImpl for QueueFunction {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let source = if self.claim {
            let usage = || {
                DataFusionError::Plan(
                    "claim_actions(channel, n): a channel name and how many actions to claim"
                        .into(),
                )
            };
            let channel = match args.first().and_then(literal) {
                Some(ScalarValue::Utf8(Some(c))) => c.clone(),
                _ => return Err(usage()),
            };
            let limit = match args.get(1).and_then(literal) {
                Some(ScalarValue::Int64(Some(n))) if *n > 0 => *n as usize,
                _ => return Err(usage()),
            };
            Source::Claim { channel, limit }
        } else {
            let ids = match args.first().and_then(literal) {
                Some(ScalarValue::Utf8(Some(list))) => list
                    .split(',')
                    .map(|id| id.trim().parse::<u64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| {
                        DataFusionError::Plan(format!(
                            "ack_actions('{list}'): a comma-separated list of action ids"
                        ))
                    })?,
                _ => {
                    return Err(DataFusionError::Plan(
                        "ack_actions('17,18,19'): the action ids to acknowledge".into(),
                    ));
                }
            };
            Source::Ack { ids }
        };
        Ok(Arc::new(QueueTable {
            queue: Arc::clone(&self.queue),
            source,
            visibility_micros: self.visibility_micros,
        }))
    }
}

/// `EXPLAIN TRIGGER`: one row per row the trigger would fire at `now`, with its decision
/// (`delayed_until` is set when quiet hours hold a message back).
pub fn explain(outcome: &RunOutcome, payloads: &[String], now: i64) -> Result<crate::QueryResult> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("decision", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("delayed_until", timestamp(), true),
        Field::new("row_key", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
    ]));
    let rows = &outcome.decisions;
    let (decision, reason, at): (Vec<&str>, Vec<Option<String>>, Vec<Option<i64>>) = rows
        .iter()
        .map(|(_, d)| match d {
            Decision::Send { available_at } => {
                ("send", None, (*available_at > now).then_some(*available_at))
            }
            Decision::Suppress(reason) => ("suppress", Some(reason.to_string()), None),
            Decision::HoldOut => ("hold_out", Some("holdout".to_string()), None),
        })
        .fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (d, r, a)| {
                acc.0.push(d);
                acc.1.push(r);
                acc.2.push(a);
                acc
            },
        );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(c, _)| &c.profile_id),
        )),
        Arc::new(StringArray::from(decision)),
        Arc::new(StringArray::from(reason)),
        micros(at.into_iter()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(c, _)| &c.key),
        )),
        Arc::new(StringArray::from_iter_values(payloads)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| C360Error::Arrow {
        context: "EXPLAIN TRIGGER".into(),
        source: e,
    })?;
    Ok(crate::QueryResult {
        schema,
        batches: vec![batch],
    })
}
