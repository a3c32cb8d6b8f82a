//! The Segment HTTP tracking API's messages: validation and conversion into event rows.
//!
//! Every message of a request is checked before anything is kept, so that a bad message in
//! a batch rejects the whole batch and nothing of it is written. A rejection names the
//! field (`batch[3].userId`) so that an SDK author can fix the call from the message alone.

use serde_json::{Map, Value};

use crate::sources::events::EventRow;

/// The message types of the spec, as they appear in `type` and in the endpoint names.
pub const TYPES: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// A message that does not follow the spec: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    fn new(field: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parses the body of `/v1/<kind>` (one message) or, with `kind` = `batch`, of `/v1/batch`.
/// `received_at` is the collector's clock, in microseconds since the epoch.
///
/// A valid body is read straight into typed fields (`typed.rs`). Anything that path does not
/// expect (a type mismatch, a duplicate key, a bad time) is read again as a JSON tree, which
/// names the offending field: errors are rare, and worth a second parse to be precise.
pub fn parse_body(
    kind: &str,
    body: &[u8],
    received_at: i64,
) -> Result<(Option<String>, Vec<EventRow>), Invalid> {
    match super::typed::parse_body(kind, body, received_at) {
        Some(parsed) => parsed,
        None => parse_tree(kind, body, received_at),
    }
}

/// [`parse_body`] through a JSON tree, which checks and names every field.
pub(super) fn parse_tree(
    kind: &str,
    body: &[u8],
    received_at: i64,
) -> Result<(Option<String>, Vec<EventRow>), Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Invalid::new("body", format!("not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Invalid::new("body", "must be a JSON object"));
    };
    let write_key = optional_string(&object, Path::Body, "writeKey")?;
    if kind != "batch" {
        let row = message(kind, &object, Path::Body, None, None, received_at)?;
        return Ok((write_key, vec![row]));
    }
    let batch = match object.get("batch") {
        Some(Value::Array(batch)) => batch,
        Some(_) => return Err(Invalid::new("batch", "must be an array of messages")),
        None => return Err(Invalid::new("batch", "is required")),
    };
    let sent_at = optional_time(&object, Path::Body, "sentAt")?;
    // Serialized once for the whole batch: most messages of a batch inherit it.
    let context = match object.get("context") {
        None | Some(Value::Null) => None,
        Some(context @ Value::Object(_)) => Some(context.to_string()),
        Some(_) => return Err(Invalid::new("context", "must be an object")),
    };
    let mut rows = Vec::with_capacity(batch.len());
    for (i, item) in batch.iter().enumerate() {
        let at = Path::Batch(i);
        let Value::Object(item) = item else {
            return Err(Invalid::new(&format!("batch[{i}]"), "must be an object"));
        };
        let item_kind = match item.get("type") {
            Some(Value::String(t)) if TYPES.contains(&t.as_str()) => t.as_str(),
            Some(Value::String(t)) => {
                return Err(at.invalid("type", format!("'{t}' is not one of {}", TYPES.join(", "))));
            }
            Some(_) => return Err(at.invalid("type", "must be a string")),
            None => return Err(at.invalid("type", "is required")),
        };
        rows.push(message(
            item_kind,
            item,
            at,
            sent_at,
            context.as_deref(),
            received_at,
        )?);
    }
    Ok((write_key, rows))
}

/// Where a message sits in the request body, to name a field in an error: `userId` in a
/// single message, `batch[3].userId` in a batch. The name is only formatted for an error,
/// since a valid message's dozen fields would otherwise cost a dozen allocations.
#[derive(Debug, Clone, Copy)]
pub(super) enum Path {
    Body,
    Batch(usize),
}

impl Path {
    fn field(self, key: &str) -> String {
        match self {
            Path::Body => key.to_string(),
            Path::Batch(i) => format!("batch[{i}].{key}"),
        }
    }

    pub(super) fn invalid(self, key: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: self.field(key),
            reason: reason.into(),
        }
    }
}

/// One message. `at` names its fields in errors; `batch_sent_at` and `batch_context` (JSON
/// text) come from the enclosing batch and yield to the message's own.
fn message(
    kind: &str,
    m: &Map<String, Value>,
    at: Path,
    batch_sent_at: Option<i64>,
    batch_context: Option<&str>,
    received_at: i64,
) -> Result<EventRow, Invalid> {
    let kind = TYPES
        .iter()
        .find(|t| **t == kind)
        .copied()
        .ok_or_else(|| Invalid::new("type", format!("unknown message type '{kind}'")))?;
    let fields = Fields {
        user_id: optional_id(m, at, "userId")?,
        anonymous_id: optional_id(m, at, "anonymousId")?,
        event: optional_string(m, at, "event")?,
        group_id: optional_id(m, at, "groupId")?,
        previous_id: optional_id(m, at, "previousId")?,
        message_id: optional_id(m, at, "messageId")?,
        name: optional_string(m, at, "name")?,
        properties: optional_object(m, at, "properties")?,
        traits: optional_object(m, at, "traits")?,
        context: optional_object(m, at, "context")?,
        // Both are checked, though the first one present is used.
        timestamp: optional_time(m, at, "timestamp")?,
        original_timestamp: optional_time(m, at, "originalTimestamp")?,
        sent_at: optional_time(m, at, "sentAt")?,
    };
    fields.into_row(kind, at, batch_sent_at, batch_context, received_at)
}

/// A message's fields once read and typed (ids as text, objects as JSON text, times in µs),
/// by either reader: `typed.rs` for the common case, the `Value` walk above otherwise.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub event: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    pub message_id: Option<String>,
    pub name: Option<String>,
    pub properties: Option<String>,
    pub traits: Option<String>,
    pub context: Option<String>,
    pub timestamp: Option<i64>,
    pub original_timestamp: Option<i64>,
    pub sent_at: Option<i64>,
}

impl Fields {
    /// The spec's rules for a `kind` message, then its event row.
    pub(super) fn into_row(
        self,
        kind: &'static str,
        at: Path,
        batch_sent_at: Option<i64>,
        batch_context: Option<&str>,
        received_at: i64,
    ) -> Result<EventRow, Invalid> {
        if self.user_id.is_none() && self.anonymous_id.is_none() {
            return Err(at.invalid("userId", "userId or anonymousId is required"));
        }
        if kind == "track" && self.event.is_none() {
            return Err(at.invalid("event", "is required for track"));
        }
        if kind == "group" && self.group_id.is_none() {
            return Err(at.invalid("groupId", "is required for group"));
        }
        if kind == "alias" && (self.previous_id.is_none() || self.user_id.is_none()) {
            let missing = if self.previous_id.is_none() {
                "previousId"
            } else {
                "userId"
            };
            return Err(at.invalid(missing, "is required for alias"));
        }
        let original = self.timestamp.or(self.original_timestamp);
        let sent_at = self.sent_at.or(batch_sent_at);
        Ok(EventRow {
            message_id: self
                .message_id
                .unwrap_or_else(|| format!("c360-{}", uuid::Uuid::new_v4())),
            kind,
            anonymous_id: self.anonymous_id,
            user_id: self.user_id,
            event: self.event,
            properties: self.properties.unwrap_or_else(|| "{}".to_string()),
            traits: self.traits,
            context: self
                .context
                .unwrap_or_else(|| batch_context.unwrap_or("{}").to_string()),
            timestamp: corrected_timestamp(original, sent_at, received_at),
            name: self.name,
            group_id: self.group_id,
            previous_id: self.previous_id,
            original_timestamp: original,
            sent_at,
            received_at,
        })
    }
}

/// The spec's clock-skew correction: a device's clock may be off, but the time between its
/// `timestamp` and its `sentAt` is right, so the event happened that long before the
/// collector received it. Without `sentAt` the device's timestamp stands; without a
/// timestamp the event happened when it was received.
pub fn corrected_timestamp(original: Option<i64>, sent_at: Option<i64>, received_at: i64) -> i64 {
    match (original, sent_at) {
        (Some(t), Some(sent)) => received_at - (sent - t),
        (Some(t), None) => t,
        (None, _) => received_at,
    }
}

/// Identifiers: strings, or numbers (some SDKs send numeric user ids), kept as text.
fn optional_id(m: &Map<String, Value>, at: Path, key: &str) -> Result<Option<String>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(at.invalid(key, "must be a string")),
    }
}

fn optional_string(m: &Map<String, Value>, at: Path, key: &str) -> Result<Option<String>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(at.invalid(key, "must be a string")),
    }
}

/// Objects are kept as JSON text, for SQL's `->` and `->>`.
fn optional_object(m: &Map<String, Value>, at: Path, key: &str) -> Result<Option<String>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.to_string())),
        Some(_) => Err(at.invalid(key, "must be an object")),
    }
}

/// ISO-8601 times, as microseconds since the epoch.
fn optional_time(m: &Map<String, Value>, at: Path, key: &str) -> Result<Option<i64>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_micros()))
            .map_err(|e| at.invalid(key, format!("'{s}' is not an ISO-8601 time: {e}"))),
        Some(_) => Err(at.invalid(key, "must be an ISO-8601 string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000_000;

    fn one(kind: &str, body: &str) -> Result<EventRow, Invalid> {
        parse_body(kind, body.as_bytes(), NOW).map(|(_, mut rows)| rows.remove(0))
    }

    #[test]
    fn a_track_call_becomes_a_row_with_json_text() {
        let row = one(
            "track",
            r#"{"userId":"u1","event":"Order Completed","messageId":"m1",
                "properties":{"revenue":12.5},"context":{"ip":"1.2.3.4"}}"#,
        )
        .unwrap();
        assert_eq!(row.kind, "track");
        assert_eq!(row.user_id.as_deref(), Some("u1"));
        assert_eq!(row.properties, r#"{"revenue":12.5}"#);
        assert_eq!(row.context, r#"{"ip":"1.2.3.4"}"#);
        assert_eq!(row.timestamp, NOW);
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The device clock is an hour ahead: it says it sent at 11:00:05 an event of
        // 11:00:00; the collector received it at 10:00:07, so it happened at 10:00:02.
        let received = chrono::DateTime::parse_from_rfc3339("2025-06-15T10:00:07Z")
            .unwrap()
            .timestamp_micros();
        let row = parse_body(
            "track",
            br#"{"anonymousId":"a","event":"x","timestamp":"2025-06-15T11:00:00Z","sentAt":"2025-06-15T11:00:05Z"}"#,
            received,
        )
        .unwrap()
        .1
        .remove(0);
        let expected = chrono::DateTime::parse_from_rfc3339("2025-06-15T10:00:02Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(row.timestamp, expected);
        let sent = chrono::DateTime::parse_from_rfc3339("2025-06-15T11:00:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(row.original_timestamp, Some(sent));
    }

    #[test]
    fn batch_level_sent_at_and_context_apply_to_every_message() {
        let body = r#"{"sentAt":"2025-06-15T11:00:05Z","context":{"library":"x"},"batch":[
            {"type":"identify","userId":"u","traits":{"email":"a@b.c"},"timestamp":"2025-06-15T11:00:00Z"},
            {"type":"page","anonymousId":"a","name":"Home","context":{"own":true}}]}"#;
        let (_, rows) = parse_body("batch", body.as_bytes(), NOW).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].timestamp, NOW - 5_000_000);
        assert_eq!(rows[0].context, r#"{"library":"x"}"#);
        assert_eq!(rows[1].context, r#"{"own":true}"#);
        assert_eq!(rows[1].name.as_deref(), Some("Home"));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            ("track", "{not json", "body"),
            ("track", r#"[1]"#, "body"),
            ("track", r#"{"event":"x"}"#, "userId"),
            ("track", r#"{"userId":"u"}"#, "event"),
            ("track", r#"{"userId":{"a":1},"event":"x"}"#, "userId"),
            (
                "track",
                r#"{"userId":"u","event":"x","properties":"str"}"#,
                "properties",
            ),
            (
                "track",
                r#"{"userId":"u","event":"x","timestamp":"yesterday"}"#,
                "timestamp",
            ),
            ("alias", r#"{"userId":"u"}"#, "previousId"),
            ("group", r#"{"userId":"u"}"#, "groupId"),
            ("batch", r#"{"batch":{}}"#, "batch"),
            (
                "batch",
                r#"{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"nope"}]}"#,
                "batch[1].type",
            ),
            (
                "batch",
                r#"{"batch":[{"type":"identify","userId":"u","traits":[1]}]}"#,
                "batch[0].traits",
            ),
        ];
        for (kind, body, field) in cases {
            let err = parse_body(kind, body.as_bytes(), NOW).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
    }
}
