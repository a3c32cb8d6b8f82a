//! `identity_graphs`: each identity graph's size, state and last build or refresh, read from
//! the engine's graphs at each scan.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::identity::manager::{GraphStatus, IdentityGraphs};

/// The table, over the engine's graphs.
pub struct IdentityGraphsTable {
    graphs: Arc<IdentityGraphs>,
}

impl IdentityGraphsTable {
    pub fn new(graphs: Arc<IdentityGraphs>) -> IdentityGraphsTable {
        IdentityGraphsTable { graphs }
    }
}

impl std::fmt::Debug for IdentityGraphsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityGraphsTable")
    }
}

pub fn schema() -> SchemaRef {
    let count = |name| Field::new(name, DataType::UInt64, false);
    let timestamp = |name| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("on_new_data", DataType::Utf8, true),
        count("profiles"),
        count("records"),
        count("identifiers"),
        count("merges"),
        count("refused"),
        count("graph_bytes"),
        count("state_version"),
        count("log_rows"),
        timestamp("watermark"),
        timestamp("last_refresh"),
        Field::new("last_duration_ms", DataType::UInt64, true),
        Field::new("last_rows_read", DataType::UInt64, true),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

/// One row per graph, by name.
pub fn batch(statuses: &[GraphStatus]) -> DfResult<RecordBatch> {
    let count = |of: fn(&GraphStatus) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(statuses.iter().map(of)))
    };
    let timestamp = |of: fn(&GraphStatus) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter(statuses.iter().map(of)).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            statuses.iter().map(|s| &s.name),
        )),
        Arc::new(StringArray::from_iter_values(
            statuses.iter().map(|s| &s.source),
        )),
        Arc::new(StringArray::from_iter(
            statuses.iter().map(|s| s.schedule.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            statuses.iter().map(|s| s.on_new_data.as_deref()),
        )),
        count(|s| s.profiles),
        count(|s| s.records),
        count(|s| s.identifiers),
        count(|s| s.merges),
        count(|s| s.refused),
        count(|s| s.graph_bytes),
        count(|s| s.state_version),
        count(|s| s.log_rows),
        timestamp(|s| s.watermark),
        timestamp(|s| s.last_refresh),
        Arc::new(UInt64Array::from_iter(
            statuses.iter().map(|s| s.last_duration_ms),
        )),
        Arc::new(UInt64Array::from_iter(
            statuses.iter().map(|s| s.last_rows_read),
        )),
        Arc::new(StringArray::from_iter(
            statuses.iter().map(|s| s.last_error.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

#[async_trait]
impl TableProvider for IdentityGraphsTable {
    fn schema(&self) -> SchemaRef {
        schema()
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
        let batch = batch(&self.graphs.statuses())?;
        MemTable::try_new(schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
