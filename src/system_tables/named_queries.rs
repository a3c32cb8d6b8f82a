//! `segments`, `materialized_views` and `triggers`: each named query's definition, schedule,
//! size and the outcome of its last refresh.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::ddl::QueryKind;
use crate::error::{C360Error, Result};
use crate::refresh::Status;

fn schema(size_column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new(size_column, DataType::UInt64, false),
        Field::new(
            "last_refresh",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("last_duration_ms", DataType::UInt64, true),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

pub fn segments_schema() -> SchemaRef {
    schema("members")
}

pub fn materialized_views_schema() -> SchemaRef {
    schema("rows")
}

pub fn triggers_schema() -> SchemaRef {
    schema("candidates")
}

pub fn triggers(statuses: &[Status]) -> Result<RecordBatch> {
    batch(triggers_schema(), statuses, QueryKind::Trigger)
}

pub fn segments(statuses: &[Status]) -> Result<RecordBatch> {
    batch(segments_schema(), statuses, QueryKind::Segment)
}

pub fn materialized_views(statuses: &[Status]) -> Result<RecordBatch> {
    batch(
        materialized_views_schema(),
        statuses,
        QueryKind::MaterializedView,
    )
}

fn batch(schema: SchemaRef, statuses: &[Status], kind: QueryKind) -> Result<RecordBatch> {
    let rows: Vec<&Status> = statuses.iter().filter(|s| s.kind == kind).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|s| &s.name))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|s| &s.query))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|s| s.schedule.as_deref()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|s| s.rows as u64),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                rows.iter()
                    .map(|s| s.last_refresh.map(|t| t.timestamp_micros())),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from_iter(
            rows.iter().map(|s| s.last_duration_ms),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|s| s.last_error.as_deref()),
        )),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| C360Error::Arrow {
        context: format!("{} status table", kind.sql_name()),
        source: e,
    })
}
