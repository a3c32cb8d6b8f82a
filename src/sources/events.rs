//! The landed `events` table: one row per Segment call (track, identify, page, screen,
//! group, alias), as the HTTP collector writes it.
//!
//! The first nine columns are those of the bundled demo's event files, in the same order, so
//! that the workspace can show both as one `events` view. `properties`, `traits` and
//! `context` are JSON text, read in SQL with `->` and `->>`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The name of the landed table (in the `landed` SQL schema).
pub const EVENTS_TABLE: &str = "events";

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of the demo's event files (`c360 generate` writes them): the landed table
/// starts with the same ones, in the same order.
pub fn bundled_fields() -> Vec<Field> {
    vec![
        Field::new("message_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("anonymous_id", DataType::Utf8, true),
        Field::new("user_id", DataType::Utf8, true),
        // track: the event name.
        Field::new("event", DataType::Utf8, true),
        Field::new("properties", DataType::Utf8, false),
        Field::new("traits", DataType::Utf8, true),
        Field::new("context", DataType::Utf8, false),
        // When it happened, corrected for the device's clock skew (see collect::segment).
        Field::new("timestamp", timestamp(), false),
    ]
}

pub fn schema() -> SchemaRef {
    let mut fields = bundled_fields();
    fields.extend([
        // page and screen: the page or screen name.
        Field::new("name", DataType::Utf8, true),
        // group: the account; alias: the identity being merged into user_id.
        Field::new("group_id", DataType::Utf8, true),
        Field::new("previous_id", DataType::Utf8, true),
        // What the client said, and when the collector received it.
        Field::new("original_timestamp", timestamp(), true),
        Field::new("sent_at", timestamp(), true),
        Field::new("received_at", timestamp(), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// One row of the events table, as the collector builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub message_id: String,
    pub kind: &'static str,
    pub anonymous_id: Option<String>,
    pub user_id: Option<String>,
    pub event: Option<String>,
    pub properties: String,
    pub traits: Option<String>,
    pub context: String,
    /// Microseconds since the epoch, UTC, as every timestamp below.
    pub timestamp: i64,
    pub name: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    pub original_timestamp: Option<i64>,
    pub sent_at: Option<i64>,
    pub received_at: i64,
}

/// The rows as one batch of [`schema`].
pub fn to_batch(rows: &[EventRow]) -> crate::Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
    let text = |f: &dyn Fn(&EventRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let time = |f: &dyn Fn(&EventRow) -> Option<i64>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(f)
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let columns = vec![
        text(&|r| Some(&r.message_id)),
        text(&|r| Some(r.kind)),
        text(&|r| r.anonymous_id.as_deref()),
        text(&|r| r.user_id.as_deref()),
        text(&|r| r.event.as_deref()),
        text(&|r| Some(&r.properties)),
        text(&|r| r.traits.as_deref()),
        text(&|r| Some(&r.context)),
        time(&|r| Some(r.timestamp)),
        text(&|r| r.name.as_deref()),
        text(&|r| r.group_id.as_deref()),
        text(&|r| r.previous_id.as_deref()),
        time(&|r| r.original_timestamp),
        time(&|r| r.sent_at),
        time(&|r| Some(r.received_at)),
    ];
    datafusion::arrow::array::RecordBatch::try_new(schema(), columns)
        .map_err(|e| crate::C360Error::arrow("building a batch of events", e))
}
