//! Triggers: a scheduled query whose rows that turned true since the last run become actions,
//! after policy (see `actions::policy`).
//!
//! The query returns `profile_id` and the columns a message needs. c360 joins each row to
//! `profiles` for what the policy reads there (consent to the channel, the time zone for
//! quiet hours), then hands the rows to the queue, which diffs them against the trigger's
//! checkpoint and enqueues in the same transaction.

use std::collections::HashMap;
use std::sync::Arc;

use chrono_tz::Tz;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::prelude::SessionContext;

use crate::actions::Payloads;
use crate::actions::policy::{Candidate, Cap, Policy};
use crate::config::ActionSettings;
use crate::ddl::QueryDefinition;
use crate::error::{C360Error, Result};

const CONSENT: &str = "__c360_consent";
const TIME_ZONE: &str = "__c360_time_zone";
/// Where consent and time zones are read.
const PROFILES: &str = "profiles";

/// A trigger's policy and the SQL that gives its candidate rows.
pub struct Prepared {
    pub policy: Policy,
    sql: String,
}

/// Checks a trigger's definition against the catalog and builds what its runs need.
pub async fn prepare(
    ctx: &SessionContext,
    definition: &QueryDefinition,
    settings: &ActionSettings,
) -> Result<Prepared> {
    let name = &definition.name;
    let invalid =
        |message: String| C360Error::InvalidArgument(format!("trigger {name}: {message}"));
    let channel = definition.channel.as_deref().unwrap_or_default();
    let pressure_cap = if settings.pressure_cap.trim().is_empty() {
        None
    } else {
        Some(Cap::parse(&settings.pressure_cap)?)
    };
    let time_zone = settings.time_zone.parse().map_err(|_| {
        C360Error::Config(format!(
            "actions.time_zone '{}' is not an IANA time zone",
            settings.time_zone
        ))
    })?;
    let policy = Policy::from_options(channel, &definition.options, pressure_cap, time_zone)
        .map_err(|e| invalid(e.to_string()))?;

    let frame = ctx
        .sql(&definition.query)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    let columns: Vec<String> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let wanted = std::iter::once("profile_id")
        .chain(policy.require.iter().map(String::as_str))
        .chain(policy.dedup_key.as_deref());
    for column in wanted {
        if !columns.iter().any(|c| c == column) {
            return Err(invalid(format!(
                "the query must return a {column} column; it returns {}",
                columns.join(", ")
            )));
        }
    }

    let profiles = match ctx.table_provider(PROFILES).await {
        Ok(table) => Some(table.schema()),
        Err(_) => None,
    };
    let has = |column: &str| {
        profiles
            .as_ref()
            .is_some_and(|schema| schema.field_with_name(column).is_ok())
    };
    let consent = match &policy.consent_column {
        None => "CAST(NULL AS BOOLEAN)".to_string(),
        Some(column) if has(column) => format!("p.\"{column}\""),
        Some(column) => {
            return Err(invalid(format!(
                "channel {channel} needs consent, and {PROFILES} has no column {column}: \
                 set consent = '<column>' (or 'none' for messages that need none)"
            )));
        }
    };
    let zone = if has("time_zone") {
        "CAST(p.time_zone AS VARCHAR)"
    } else {
        "CAST(NULL AS VARCHAR)"
    };
    let sql = if profiles.is_some() {
        format!(
            "SELECT q.*, {consent} AS {CONSENT}, {zone} AS {TIME_ZONE} \
             FROM ({}) q LEFT JOIN {PROFILES} p ON p.profile_id = q.profile_id",
            definition.query
        )
    } else {
        format!(
            "SELECT q.*, {consent} AS {CONSENT}, {zone} AS {TIME_ZONE} FROM ({}) q",
            definition.query
        )
    };
    Ok(Prepared { policy, sql })
}

/// Runs the trigger's query: its current rows, as candidates for the queue, and the
/// columns their payloads are rendered from.
pub async fn candidates(
    ctx: &SessionContext,
    prepared: &Prepared,
) -> Result<(Vec<Candidate>, PayloadColumns)> {
    let frame = ctx.sql(&prepared.sql).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    let mut out = Vec::new();
    let mut zones = HashMap::new();
    for batch in &batches {
        rows_of(batch, &prepared.policy, out.len(), &mut zones, &mut out)?;
    }
    let own: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            let name = schema.field(i).name();
            name != CONSENT && name != TIME_ZONE
        })
        .collect();
    let arrow = |e| C360Error::Arrow {
        context: "trigger rows".into(),
        source: e,
    };
    let all = concat_batches(&schema, &batches).map_err(arrow)?;
    Ok((
        out,
        PayloadColumns {
            batch: all.project(&own).map_err(arrow)?,
        },
    ))
}

/// The query's own columns, rendered as one JSON object per row on demand.
pub struct PayloadColumns {
    batch: RecordBatch,
}

impl Payloads for PayloadColumns {
    fn render(&self, rows: &[usize]) -> Result<Vec<String>> {
        let arrow = |e| C360Error::Arrow {
            context: "trigger payloads".into(),
            source: e,
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let taken = take_record_batch(&self.batch, &indices).map_err(arrow)?;
        let mut buffer = Vec::new();
        {
            // Explicit nulls: a receiver sees that a field is empty rather than missing.
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut buffer);
            writer.write(&taken).map_err(arrow)?;
            writer.finish().map_err(arrow)?;
        }
        let text = String::from_utf8(buffer)
            .map_err(|e| C360Error::InvalidArgument(format!("trigger payload: {e}")))?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<Arc<dyn Array>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| C360Error::InvalidArgument(format!("trigger row has no column {name}")))?;
    cast(column, &DataType::Utf8).map_err(|e| C360Error::Arrow {
        context: format!("trigger column {name}"),
        source: e,
    })
}

/// Appends a batch's rows as candidates; `first_row` is the batch's first row's position
/// in the whole result, and `zones` caches parsed time zones (a few distinct values).
fn rows_of(
    batch: &RecordBatch,
    policy: &Policy,
    first_row: usize,
    zones: &mut HashMap<String, Option<Tz>>,
    out: &mut Vec<Candidate>,
) -> Result<()> {
    let profile = text_column(batch, "profile_id")?;
    let profile = profile.as_string::<i32>();
    let dedup = match &policy.dedup_key {
        Some(column) => Some(text_column(batch, column)?),
        None => None,
    };
    let required: Vec<Arc<dyn Array>> = policy
        .require
        .iter()
        .map(|column| text_column(batch, column))
        .collect::<Result<_>>()?;
    let consent = batch
        .column_by_name(CONSENT)
        .and_then(|c| c.as_boolean_opt().cloned());
    let zone = text_column(batch, TIME_ZONE)?;
    let zone = zone.as_string::<i32>();
    for row in 0..batch.num_rows() {
        if profile.is_null(row) {
            continue;
        }
        let profile_id = profile.value(row).to_string();
        let key = match &dedup {
            Some(column) => {
                let column = column.as_string::<i32>();
                let part = if column.is_null(row) {
                    ""
                } else {
                    column.value(row)
                };
                format!("{profile_id}:{part}")
            }
            None => profile_id.clone(),
        };
        let time_zone = if zone.is_null(row) {
            None
        } else {
            let name = zone.value(row);
            match zones.get(name) {
                Some(parsed) => *parsed,
                None => {
                    let parsed = name.parse::<Tz>().ok();
                    zones.insert(name.to_string(), parsed);
                    parsed
                }
            }
        };
        out.push(Candidate {
            key,
            row: first_row + row,
            required: required
                .iter()
                .map(|column| {
                    let column = column.as_string::<i32>();
                    (!column.is_null(row)).then(|| column.value(row).to_string())
                })
                .collect(),
            consent: consent
                .as_ref()
                .and_then(|c| (!c.is_null(row)).then(|| c.value(row))),
            time_zone,
            profile_id,
        });
    }
    Ok(())
}
