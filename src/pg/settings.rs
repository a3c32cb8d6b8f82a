//! `SET` and `SHOW` for the Postgres session settings that clients and drivers send.
//!
//! datafusion-postgres answers a few of them (and `statement_timeout`, `TIME ZONE` and
//! DataFusion's own `datafusion.*` options, which stay with it); the ones it does not know,
//! or stores wrongly (numbers), are kept here, in the client's metadata under their lower-case
//! name, where pgwire's text encoders read `datestyle`, `intervalstyle`, `bytea_output` and
//! `extra_float_digits`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ToDFSchema;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::sql::sqlparser::ast::{self, Expr, Set, Statement};
use futures::{Sink, SinkExt};
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::startup::ParameterStatus;

use super::errors;
use super::roles::Role;

/// Settings answered here: name, default, and whether a change is reported to the client
/// with ParameterStatus (PostgreSQL's GUC_REPORT settings).
const SETTINGS: &[(&str, &str, bool)] = &[
    ("application_name", "", true),
    ("bytea_output", "hex", false),
    ("client_encoding", "UTF8", true),
    ("client_min_messages", "notice", false),
    ("datestyle", "ISO, MDY", true),
    ("default_transaction_isolation", "read committed", false),
    ("default_transaction_read_only", "off", true),
    ("extra_float_digits", "1", false),
    ("integer_datetimes", "on", true),
    ("intervalstyle", "postgres", true),
    ("lc_messages", "C", false),
    ("lc_monetary", "C", false),
    ("lc_numeric", "C", false),
    ("lc_time", "C", false),
    ("max_identifier_length", "63", false),
    ("search_path", "public", false),
    ("server_encoding", "UTF8", true),
    ("server_version", "16.6", true),
    ("server_version_num", "160006", false),
    ("standard_conforming_strings", "on", true),
    ("transaction_isolation", "read committed", false),
    ("transaction_read_only", "off", false),
];

/// The name PostgreSQL reports a setting under (ParameterStatus, SHOW's column).
fn display_name(name: &str) -> &str {
    match name {
        "datestyle" => "DateStyle",
        "intervalstyle" => "IntervalStyle",
        other => other,
    }
}

fn known(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    SETTINGS.iter().find(|(known, _, _)| *known == name)
}

/// Settings that may only take their one value (the server speaks UTF-8 only, and so on).
fn fixed(name: &str) -> bool {
    matches!(
        name,
        "server_encoding"
            | "server_version"
            | "server_version_num"
            | "integer_datetimes"
            | "max_identifier_length"
            | "transaction_read_only"
            | "default_transaction_read_only"
            | "lc_messages"
            | "lc_monetary"
            | "lc_numeric"
            | "lc_time"
    )
}

/// The setting a `SHOW` names, if it is one of ours.
pub fn shown(statement: &Statement) -> Option<String> {
    let Statement::ShowVariable { variable } = statement else {
        return None;
    };
    let name = variable
        .iter()
        .map(|ident| ident.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    known(&name).map(|_| name)
}

/// The plan a prepared `SHOW` describes itself with: one text column.
pub fn show_plan(name: &str) -> PgWireResult<LogicalPlan> {
    let schema = Schema::new(vec![Field::new(display_name(name), DataType::Utf8, false)]);
    let schema = schema
        .to_dfschema()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        schema: Arc::new(schema),
    }))
}

/// Answers `SHOW name` from the session's value or the default.
pub fn show<C: ClientInfo + ?Sized>(client: &C, name: &str) -> PgWireResult<Response> {
    let value = current(client, name);
    let fields = Arc::new(vec![FieldInfo::new(
        display_name(name).to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    let mut response = QueryResponse::new(fields, futures::stream::once(async move { Ok(row) }));
    response.set_command_tag("SHOW");
    Ok(Response::Query(response))
}

fn current<C: ClientInfo + ?Sized>(client: &C, name: &str) -> String {
    // An analyst's session is read-only, and says so to tools that ask.
    if matches!(
        name,
        "transaction_read_only" | "default_transaction_read_only"
    ) {
        let analyst = client
            .session_extensions()
            .get::<Role>()
            .is_none_or(|role| *role == Role::Analyst);
        return if analyst { "on" } else { "off" }.to_string();
    }
    let metadata = client.metadata();
    let from_startup = metadata
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone());
    from_startup
        .or_else(|| known(name).map(|(_, default, _)| default.to_string()))
        .unwrap_or_default()
}

/// The setting a `SET` names and the value it gives, if it is one of ours.
pub fn assignment(statement: &Statement) -> Option<(String, String)> {
    let Statement::Set(Set::SingleAssignment {
        variable, values, ..
    }) = statement
    else {
        return None;
    };
    let name = variable.to_string().to_ascii_lowercase();
    known(&name)?;
    let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
    Some((name, value))
}

fn value_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(text) | ast::Value::DoubleQuotedString(text) => {
                text.clone()
            }
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// Applies `SET name = value` to the session and reports it as PostgreSQL would.
pub async fn set<C>(client: &mut C, name: &str, value: String) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if name == "client_encoding"
        && !matches!(
            value.to_ascii_uppercase().as_str(),
            "UTF8" | "UTF-8" | "UNICODE"
        )
    {
        return Err(errors::not_supported(format!(
            "client_encoding {value} is not supported: c360 speaks UTF8 only"
        )));
    }
    if fixed(name) && value != current(client, name) {
        return Err(errors::error(
            "55P02",
            format!("parameter \"{name}\" cannot be changed"),
        ));
    }
    // Startup parameters are kept under the client's spelling; one spelling from now on.
    client
        .metadata_mut()
        .retain(|key, _| !key.eq_ignore_ascii_case(name));
    client
        .metadata_mut()
        .insert(name.to_string(), value.clone());
    if known(name).is_some_and(|(_, _, reported)| *reported) {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                display_name(name).to_string(),
                value,
            )))
            .await?;
    }
    Ok(Response::Execution(Tag::new("SET")))
}

/// Applies the `-c name=value` settings of the startup packet's `options` (libpq's
/// `PGOPTIONS`, JDBC's `options`), as PostgreSQL does: the session starts with them.
/// `statement_timeout` takes PostgreSQL's units (`ms`, `s`, `min`; a bare number is ms).
pub fn apply_startup_options<C: ClientInfo + ?Sized>(client: &mut C) {
    let Some(options) = client.metadata().get("options").cloned() else {
        return;
    };
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let assignment = match word {
            "-c" => words.next(),
            other => other
                .strip_prefix("-c")
                .or_else(|| other.strip_prefix("--")),
        };
        let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase().replace('-', "_");
        if name == "statement_timeout" {
            if let Some(ms) = duration_ms(value) {
                client.metadata_mut().insert(
                    super::limits::STATEMENT_TIMEOUT_KEY.to_string(),
                    ms.to_string(),
                );
            }
        } else if known(&name).is_some() && !fixed(&name) {
            client.metadata_mut().insert(name, value.to_string());
        }
    }
}

fn duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix("min") {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (text, 1)
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .map(|n| n.saturating_mul(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_postgresql_units() {
        assert_eq!(duration_ms("250"), Some(250));
        assert_eq!(duration_ms("250ms"), Some(250));
        assert_eq!(duration_ms("2s"), Some(2000));
        assert_eq!(duration_ms("1min"), Some(60_000));
        assert_eq!(duration_ms("soon"), None);
    }
}
