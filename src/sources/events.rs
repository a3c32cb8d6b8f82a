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

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
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
        // page and screen: the page or screen name.
        Field::new("name", DataType::Utf8, true),
        // group: the account; alias: the identity being merged into user_id.
        Field::new("group_id", DataType::Utf8, true),
        Field::new("previous_id", DataType::Utf8, true),
        // What the client said, and when the collector received it.
        Field::new("original_timestamp", timestamp(), true),
        Field::new("sent_at", timestamp(), true),
        Field::new("received_at", timestamp(), false),
    ]))
}
