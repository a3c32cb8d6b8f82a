//! `FORGET PROFILE '<id>' [IN graph]`: the right to be forgotten, in landed data and in
//! everything derived from it.
//!
//! The identity graph says which identifiers are the person's (`<graph>_identities`). Every
//! landed table with a column named like an identifier type (`user_id`, `anonymous_id`,
//! `email`, `loyalty_card`, `phone`) loses the rows that carry one of them, compared raw and
//! normalized as the graph stores them (phones in the region of the profile's numbers), in
//! one copy-on-write commit per table (see `storage/delete.rs`). Queries stop returning the
//! rows at once; the old files leave the disk at the next vacuum past the retention period.
//! One audit row in `landed.erasures` records when, in which graph and how many rows, under
//! a fresh request id that the operator can file — never the profile id or an identifier,
//! which are personal data.
//!
//! Then what was derived from those rows goes, in flow order, so that nothing brings the
//! person back: the identity graph is rebuilt from its source without them (its state keeps
//! every value it has seen, so only a build drops theirs; the old state version is deleted);
//! every materialized view and segment is recomputed, and the profile's rows leave segment
//! history; the action queue deletes their actions, checkpoint keys and cap history.
//!
//! Not erased here: sources outside the storage root (`CREATE EXTERNAL TABLE` over files
//! c360 does not own) — a person still in them comes back at the next build, so erase them
//! at the source too. The rebuild costs one full build of the graph per `FORGET`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{C360Error, Result};
use crate::storage::landed::LANDED_SCHEMA;
use crate::{Engine, QueryResult};

/// The landed table of audit rows.
pub const ERASURES_TABLE: &str = "erasures";

/// Identifier types, with the SQL function that normalizes a raw column value the way the
/// identity graph stored it (`None`: compared raw only).
const IDENTIFIER_COLUMNS: [(&str, Option<&str>); 5] = [
    ("user_id", None),
    ("anonymous_id", None),
    ("email", Some("normalize_email")),
    ("loyalty_card", Some("normalize_id")),
    // Phones: see `phone_terms` (their normalization needs a region).
    ("phone", None),
];

fn audit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new(
            "erased_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("graph", DataType::Utf8, false),
        Field::new("tables", DataType::Utf8, false),
        Field::new("rows_deleted", DataType::Int64, false),
    ]))
}

/// Erases the landed records of `profile_id`; the result is the audit row.
pub async fn forget_profile(
    engine: &Engine,
    profile_id: &str,
    graph: Option<&str>,
) -> Result<QueryResult> {
    let graph = match graph {
        Some(graph) => graph.to_string(),
        None => only_graph(engine).await?,
    };
    let identifiers = identifiers_of(engine, &graph, profile_id).await?;
    if identifiers.is_empty() {
        return Err(C360Error::NotFound(format!(
            "profile '{profile_id}' in identity graph {graph}"
        )));
    }
    let mut per_table = BTreeMap::new();
    for name in engine.landed().names() {
        let Some(table) = engine.landed().get(&name) else {
            continue;
        };
        let Some(condition) = condition(&table.schema(), &identifiers) else {
            continue;
        };
        let sql = format!("DELETE FROM {LANDED_SCHEMA}.{name} WHERE {condition}");
        let batches = engine.context().sql(&sql).await?.collect().await?;
        let deleted: u64 = batches
            .iter()
            .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
            .flat_map(|a| a.iter().flatten())
            .sum();
        if deleted > 0 {
            per_table.insert(name, deleted);
        }
    }
    // Derived state next, and the audit row last: if a step fails, the profile is still in
    // the graph, so the same FORGET can be run again to finish.
    let ctx = engine.context();
    engine.identity_graphs().rebuild(ctx, &graph).await?;
    engine
        .refresh_engine()
        .forget_profile(ctx, profile_id)
        .await?;
    let actions = engine.refresh_engine().queue().forget_profile(profile_id)?;
    let audit = audit_row(&graph, &per_table)?;
    let erasures = engine
        .landed()
        .get_or_create(ERASURES_TABLE, audit_schema())
        .await?;
    erasures.append(std::slice::from_ref(&audit)).await?;
    tracing::info!(
        graph = %graph,
        tables = per_table.len(),
        actions,
        "profile erased from landed tables and derived state"
    );
    Ok(QueryResult {
        schema: audit.schema(),
        batches: vec![audit],
    })
}

async fn only_graph(engine: &Engine) -> Result<String> {
    let mut names = engine.identity_graphs().names().await;
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => Err(C360Error::NotFound(
            "an identity graph to find the profile in".into(),
        )),
        _ => Err(C360Error::InvalidArgument(format!(
            "several identity graphs ({}): say which with FORGET PROFILE '…' IN <graph>",
            names.join(", ")
        ))),
    }
}

/// (id_type, id_value) of the profile.
async fn identifiers_of(
    engine: &Engine,
    graph: &str,
    profile_id: &str,
) -> Result<Vec<(String, String)>> {
    let sql = format!(
        "SELECT CAST(id_type AS VARCHAR), CAST(id_value AS VARCHAR) FROM {graph}_identities \
         WHERE profile_id = {}",
        quote(profile_id)
    );
    let batches = engine.context().sql(&sql).await?.collect().await?;
    let mut out = Vec::new();
    for batch in batches {
        let cast = |i: usize| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let (types, values) = (
            cast(0).map_err(|e| C360Error::arrow("reading identifiers", e))?,
            cast(1).map_err(|e| C360Error::arrow("reading identifiers", e))?,
        );
        let (types, values) = (types.as_string::<i32>(), values.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if types.is_valid(i) && values.is_valid(i) {
                out.push((types.value(i).to_string(), values.value(i).to_string()));
            }
        }
    }
    Ok(out)
}

/// The WHERE condition matching the person's rows in a table with `schema`, if it has any
/// identifier column the profile has values for.
fn condition(schema: &SchemaRef, identifiers: &[(String, String)]) -> Option<String> {
    let mut terms = Vec::new();
    for (column, normalize) in IDENTIFIER_COLUMNS {
        if schema.field_with_name(column).is_err() {
            continue;
        }
        let values: Vec<String> = identifiers
            .iter()
            .filter(|(t, _)| t == column)
            .map(|(_, v)| quote(v))
            .collect();
        if values.is_empty() {
            continue;
        }
        let list = values.join(", ");
        terms.push(format!("\"{column}\" IN ({list})"));
        if let Some(function) = normalize {
            terms.push(format!("{function}(\"{column}\") IN ({list})"));
        }
        if column == "phone" {
            terms.extend(phone_terms(identifiers, &list));
        }
    }
    (!terms.is_empty()).then(|| terms.join(" OR "))
}

/// Phones as typed (`06 12 34 56 78`) match the graph's E.164 values once normalized in the
/// region of those values: each region the profile's phones belong to gives one term.
fn phone_terms(identifiers: &[(String, String)], list: &str) -> Vec<String> {
    let regions: std::collections::BTreeSet<String> = identifiers
        .iter()
        .filter(|(t, _)| t == "phone")
        .filter_map(|(_, value)| {
            // Phone parsers have panicked on odd input; an unknown region only costs this term.
            std::panic::catch_unwind(|| {
                rlibphonenumber::PHONE_NUMBER_UTIL
                    .parse(value, None)
                    .ok()?
                    .get_region_code()
            })
            .ok()
            .flatten()
        })
        .map(|region| region.to_string())
        .collect();
    regions
        .iter()
        .map(|region| format!("normalize_phone(\"phone\", {}) IN ({list})", quote(region)))
        .collect()
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn audit_row(graph: &str, per_table: &BTreeMap<String, u64>) -> Result<RecordBatch> {
    let tables = per_table
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: u64 = per_table.values().sum();
    RecordBatch::try_new(
        audit_schema(),
        vec![
            Arc::new(StringArray::from(vec![uuid::Uuid::new_v4().to_string()])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![chrono::Utc::now().timestamp_micros()])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![graph.to_string()])),
            Arc::new(StringArray::from(vec![tables])),
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                rows as i64,
            ])),
        ],
    )
    .map_err(|e| C360Error::arrow("building the erasure audit row", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[tokio::test]
    async fn identifiers_match_raw_and_normalized_values_in_landed_tables() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data: dir.path().display().to_string(),
            ..Settings::default()
        };
        let engine = Engine::open_without_workspace(settings).await.unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("email", DataType::Utf8, true),
            Field::new("phone", DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some(" Jo@Example.ORG "),
                    None,
                    Some("other@example.org"),
                ])),
                Arc::new(StringArray::from(vec![None, Some("06 12 34 56 78"), None])),
            ],
        )
        .unwrap();
        let mut loader = engine.loader("crm").unwrap();
        loader.push(rows, "test", 1).await.unwrap();
        loader.commit(&engine).await.unwrap();

        let identifiers = vec![
            ("email".to_string(), "jo@example.org".to_string()),
            ("phone".to_string(), "+33612345678".to_string()),
        ];
        let table = engine.landed().get("crm").unwrap();
        let condition = condition(&table.schema(), &identifiers).unwrap();
        assert!(
            condition.contains("normalize_phone(\"phone\", 'FR')"),
            "{condition}"
        );
        let deleted = engine
            .query(&format!("DELETE FROM landed.crm WHERE {condition}"))
            .await
            .unwrap();
        let count = deleted[0].batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0);
        assert_eq!(count, 2);
        assert_eq!(table.snapshot().row_count(), Some(1));
    }
}
