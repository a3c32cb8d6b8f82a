//! The common case of [`super::segment::parse_body`]: a valid body read straight into typed
//! fields, with no JSON tree in between. Objects (`properties`, `traits`, `context`) are kept
//! as the text the client sent instead of being parsed into maps and printed again.
//!
//! Nothing here reports a malformed field. On anything unexpected (a number where a string
//! goes, a duplicate key, a time that does not parse) it gives up with `None`, and the caller
//! reads the body again as a tree, which names the field. Only the spec's rules on fields
//! that did parse (`userId or anonymousId is required`, …) are reported from here, with the
//! same wording, since both readers share them.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::segment::{Fields, Invalid, Path, TYPES};
use crate::sources::events::EventRow;

/// One message, as the spec names its fields. Unknown fields are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    event: Option<String>,
    group_id: Option<String>,
    previous_id: Option<String>,
    message_id: Option<String>,
    name: Option<String>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a str>,
    #[serde(borrow)]
    original_timestamp: Option<&'a str>,
    #[serde(borrow)]
    sent_at: Option<&'a str>,
    /// Only read at the top of a single-message body.
    write_key: Option<String>,
}

/// The body of `/v1/batch`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<Message<'a>>,
    write_key: Option<String>,
    #[serde(borrow)]
    sent_at: Option<&'a str>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
}

type Parsed = Result<(Option<String>, Vec<EventRow>), Invalid>;

/// The body's write key and rows, or the rule a message breaks; `None` when the body is not
/// of the expected shape, for the tree reader to say why.
pub(super) fn parse_body(kind: &str, body: &[u8], received_at: i64) -> Option<Parsed> {
    if kind != "batch" {
        let kind = known_type(kind)?;
        let mut message: Message = serde_json::from_slice(body).ok()?;
        let write_key = message.write_key.take();
        return Some(
            fields(message)?
                .into_row(kind, Path::Body, None, None, received_at)
                .map(|row| (write_key, vec![row])),
        );
    }
    let batch: Batch = serde_json::from_slice(body).ok()?;
    let sent_at = time(batch.sent_at)?;
    let context = object(batch.context)?;
    // Every message is read before any rule is checked, as the tree reader does for the
    // shapes: a shape problem anywhere goes to it, whatever rule an earlier message breaks.
    let mut read = Vec::with_capacity(batch.batch.len());
    for message in batch.batch {
        read.push((known_type(message.kind?)?, fields(message)?));
    }
    let rows = read
        .into_iter()
        .enumerate()
        .map(|(i, (kind, fields))| {
            fields.into_row(
                kind,
                Path::Batch(i),
                sent_at,
                context.as_deref(),
                received_at,
            )
        })
        .collect::<Result<Vec<_>, _>>();
    Some(rows.map(|rows| (batch.write_key, rows)))
}

fn known_type(kind: &str) -> Option<&'static str> {
    TYPES.iter().find(|t| **t == kind).copied()
}

fn fields(message: Message) -> Option<Fields> {
    Some(Fields {
        user_id: id(message.user_id),
        anonymous_id: id(message.anonymous_id),
        event: message.event,
        group_id: id(message.group_id),
        previous_id: id(message.previous_id),
        message_id: id(message.message_id),
        name: message.name,
        properties: object(message.properties)?,
        traits: object(message.traits)?,
        context: object(message.context)?,
        timestamp: time(message.timestamp)?,
        original_timestamp: time(message.original_timestamp)?,
        sent_at: time(message.sent_at)?,
    })
}

/// An empty id is no id, as in the tree reader.
fn id(value: Option<String>) -> Option<String> {
    value.filter(|id| !id.is_empty())
}

/// `Some(None)` when absent or null, `Some(Some(text))` for an object, `None` otherwise.
fn object(value: Option<&RawValue>) -> Option<Option<String>> {
    match value {
        None => Some(None),
        Some(raw) if raw.get().starts_with('{') => Some(Some(raw.get().to_string())),
        Some(_) => None,
    }
}

/// `Some(None)` when absent or null, `Some(Some(µs))` for an ISO-8601 time, `None` otherwise.
fn time(value: Option<&str>) -> Option<Option<i64>> {
    match value {
        None => Some(None),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Some(t.timestamp_micros())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000_000;

    /// The tree reader's rows for `body`, bypassing this module.
    fn by_tree(kind: &str, body: &str) -> Parsed {
        super::super::segment::parse_tree(kind, body.as_bytes(), NOW)
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    /// Both readers give the same rows; JSON text may differ in layout, not in meaning.
    fn assert_same(kind: &str, body: &str) {
        let fast = parse_body(kind, body.as_bytes(), NOW)
            .unwrap_or_else(|| panic!("the typed reader gave up on {body}"));
        let tree = by_tree(kind, body);
        match (fast, tree) {
            (Ok((fast_key, fast)), Ok((tree_key, tree))) => {
                assert_eq!(fast_key, tree_key, "{body}");
                assert_eq!(fast.len(), tree.len(), "{body}");
                for (a, b) in fast.iter().zip(&tree) {
                    assert_eq!(json(&a.properties), json(&b.properties), "{body}");
                    assert_eq!(json(&a.context), json(&b.context), "{body}");
                    assert_eq!(a.traits.as_deref().map(json), b.traits.as_deref().map(json));
                    fn text(r: &EventRow) -> impl PartialEq + std::fmt::Debug + '_ {
                        // Ids the collector made up are random: only their presence counts.
                        let generated = r.message_id.starts_with("c360-");
                        (
                            if generated {
                                "(generated)"
                            } else {
                                r.message_id.as_str()
                            },
                            r.kind,
                            r.anonymous_id.clone(),
                            r.user_id.clone(),
                            r.event.clone(),
                            r.name.clone(),
                            r.group_id.clone(),
                            r.previous_id.clone(),
                        )
                    }
                    assert_eq!(text(a), text(b), "{body}");
                    let times = |r: &EventRow| {
                        (r.timestamp, r.original_timestamp, r.sent_at, r.received_at)
                    };
                    assert_eq!(times(a), times(b), "{body}");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{body}"),
            (fast, tree) => panic!("{body}: typed {fast:?}, tree {tree:?}"),
        }
    }

    #[test]
    fn valid_bodies_read_the_same_by_both_readers() {
        let bodies = [
            (
                "track",
                r#"{"userId":"u1","event":"Order Completed","messageId":"m1","writeKey":"k",
                    "properties":{"revenue":12.5, "items": [1, {"b":2,"a":1}]},
                    "context":{"ip":"1.2.3.4"},"timestamp":"2025-06-15T11:00:00Z",
                    "sentAt":"2025-06-15T11:00:05+02:00","unknown":[1,2,{"x":null}]}"#,
            ),
            (
                "identify",
                r#"{"anonymousId":"a\"1","userId":"","traits":{"email":"a@b.c"},"properties":null}"#,
            ),
            (
                "alias",
                r#"{"userId":"u","previousId":"p","originalTimestamp":"2025-06-15T11:00:00.123456Z"}"#,
            ),
            (
                "batch",
                r#"{"writeKey":"k","sentAt":"2025-06-15T11:00:05Z","context":{"library":{"name":"x"}},
                    "batch":[
                    {"type":"identify","userId":"u","traits":{"email":"a@b.c"},"timestamp":"2025-06-15T11:00:00Z"},
                    {"type":"page","anonymousId":"a","name":"Home \u00e9","context":{"own":true}},
                    {"type":"group","userId":"u","groupId":"g"},
                    {"type":"screen","userId":"u","name":"","event":""}]}"#,
            ),
            // Rules broken by fields of the right shape: the same error from both.
            ("track", r#"{"event":"x"}"#),
            ("track", r#"{"userId":"u"}"#),
            ("alias", r#"{"userId":"u"}"#),
            ("group", r#"{"userId":"u"}"#),
            (
                "batch",
                r#"{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"track","userId":"u"}]}"#,
            ),
        ];
        for (kind, body) in bodies {
            assert_same(kind, body);
        }
    }

    #[test]
    fn unexpected_shapes_are_left_to_the_tree_reader() {
        let bodies = [
            ("track", r#"{"userId":12,"event":"x"}"#),
            ("track", r#"{"userId":"u","userId":"v","event":"x"}"#),
            ("track", r#"{"userId":"u","event":"x","properties":"str"}"#),
            (
                "track",
                r#"{"userId":"u","event":"x","timestamp":"yesterday"}"#,
            ),
            ("track", r#"[1]"#),
            ("batch", r#"{"batch":{}}"#),
            ("batch", r#"{"sentAt":"2025-06-15T11:00:05Z"}"#),
            ("batch", r#"{"batch":[{"type":"nope","userId":"u"}]}"#),
            ("batch", r#"{"batch":[{"userId":"u"}]}"#),
            ("nope", r#"{"userId":"u"}"#),
        ];
        for (kind, body) in bodies {
            assert!(
                parse_body(kind, body.as_bytes(), NOW).is_none(),
                "{kind} {body}"
            );
        }
        // Still accepted or refused as before, by the tree reader: a numeric id is text.
        let (_, rows) =
            super::super::segment::parse_body("track", br#"{"userId":12,"event":"x"}"#, NOW)
                .unwrap();
        assert_eq!(rows[0].user_id.as_deref(), Some("12"));
    }
}
