//! Prepared lookups answered straight from the published tables' indexes.
//!
//! An app asks the same few questions thousands of times a second: the profile with this id,
//! the profile of this e-mail. DataFusion would optimize and plan each execution anew, which
//! costs more than the lookup itself; so a prepared statement whose plan is only equalities
//! on indexed columns is run here instead, at Execute, from the index (see
//! [`crate::storage::index`]): take the matching rows, project, encode.
//!
//! The shapes recognized are a projection of plain columns over one indexed table, or over an
//! inner join of two, filtered by a conjunction of `column = $n`, `column = literal` and
//! `column = column`, where one table has an indexed column equal to a constant and the
//! other, if any, is reached by an equality on one of its indexed columns (an index nested
//! loop join). Anything else, and any parameter whose type differs in kind from its column,
//! goes the normal way through DataFusion, which stays the reference: the tests run the same
//! statements both ways.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, new_empty_array};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::NullEquality;
use datafusion::common::{Column, ParamValues, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::error::Result;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator, TableScan};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use pgwire::api::ClientInfo;
use pgwire::api::portal::Portal;
use pgwire::api::results::{QueryResponse, Response};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::types::format::FormatOptions;

use crate::storage::index::{Key, KeyKind, RowId, as_type, key_at, touched};
use crate::storage::published::{PublishedTable, Snapshot};

/// Answers `portal` from the indexes if its plan is a lookup (`None`: plan it normally).
pub async fn answer<S: Clone, C: ClientInfo>(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    portal: &Portal<S>,
    client: &C,
) -> PgWireResult<Option<Response>> {
    let Some(lookup) = Lookup::recognize(plan) else {
        return Ok(None);
    };
    if !lookup.is_current(ctx).await {
        return Ok(None);
    }
    // Decoded exactly as datafusion-postgres decodes them for the normal path.
    let wire = lookup
        .params
        .iter()
        .map(into_pg_type)
        .collect::<PgWireResult<Vec<_>>>()?;
    let inferred: Vec<Option<&DataType>> = lookup.params.iter().map(Some).collect();
    let wire: Vec<Option<&pgwire::api::Type>> = wire.iter().map(Some).collect();
    let values = deserialize_parameters_with_server_types(portal, &inferred, &wire)?;
    let Some(batch) = lookup.run(&values).map_err(api_error)? else {
        return Ok(None);
    };
    // At debug level, so that an operator can see which statements take this path.
    tracing::debug!(
        rows = batch.num_rows(),
        "prepared lookup answered from the index"
    );
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &lookup.schema,
        &portal.result_column_format,
        Some(options),
    )?);
    let rows = encode_recordbatch(Arc::clone(&fields), batch);
    Ok(Some(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows),
    ))))
}

fn api_error(e: datafusion::error::DataFusionError) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

/// A table of the lookup, as the plan names it.
struct Relation {
    /// The name the catalog knows it by.
    name: TableReference,
    /// The name the plan's columns qualify it with (its alias, or its name).
    qualifier: TableReference,
    table: Arc<PublishedTable>,
    schema: SchemaRef,
}

/// (relation, column of its table)
type ColumnRef = (usize, usize);

#[derive(Debug, Clone)]
enum Value {
    /// A parameter, by position (`$1` is 0).
    Param(usize),
    Literal(ScalarValue),
}

/// A recognized lookup plan.
pub struct Lookup {
    relations: Vec<Relation>,
    /// `column = constant` conditions.
    constants: Vec<(ColumnRef, Value)>,
    /// `column = column` conditions between the two relations.
    joins: Vec<(ColumnRef, ColumnRef)>,
    /// The condition of `constants` answered by an index; its relation drives the lookup.
    driver: usize,
    /// For two relations: the join whose second column (in the other relation) is indexed.
    probe: Option<usize>,
    output: Vec<ColumnRef>,
    schema: SchemaRef,
    /// The parameters' types, `$1` first.
    params: Vec<DataType>,
}

impl Lookup {
    /// The lookup that `plan` is, if it is one.
    pub fn recognize(plan: &LogicalPlan) -> Option<Lookup> {
        let LogicalPlan::Projection(projection) = plan else {
            return None;
        };
        let mut relations = Vec::new();
        let mut conditions = Vec::new();
        flatten(&projection.input, &mut relations, &mut conditions)?;
        if relations.is_empty() || relations.len() > 2 {
            return None;
        }
        let output = projection
            .expr
            .iter()
            .map(|expr| match expr {
                Expr::Column(c) => resolve(&relations, c),
                Expr::Alias(alias) => match alias.expr.as_ref() {
                    Expr::Column(c) => resolve(&relations, c),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;

        let mut constants = Vec::new();
        let mut joins = Vec::new();
        let mut params: Vec<Option<DataType>> = Vec::new();
        for condition in &conditions {
            let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = condition
            else {
                return None;
            };
            match (left.as_ref(), right.as_ref()) {
                (Expr::Column(a), Expr::Column(b)) => {
                    let (a, b) = (resolve(&relations, a)?, resolve(&relations, b)?);
                    if a.0 == b.0 || kind(&relations, a)? != kind(&relations, b)? {
                        return None;
                    }
                    joins.push((a, b));
                }
                (Expr::Column(c), other) | (other, Expr::Column(c)) => {
                    let column = resolve(&relations, c)?;
                    let kind = kind(&relations, column)?;
                    let value = match other {
                        Expr::Literal(v, _) if KeyKind::of(&v.data_type()) == Some(kind) => {
                            Value::Literal(v.clone())
                        }
                        Expr::Placeholder(p) => {
                            let data_type = p.field.as_ref()?.data_type().clone();
                            if KeyKind::of(&data_type) != Some(kind) {
                                return None;
                            }
                            let position = p.id.strip_prefix('$')?.parse::<usize>().ok()?;
                            let slot = position.checked_sub(1)?;
                            if params.len() <= slot {
                                params.resize(slot + 1, None);
                            }
                            match &params[slot] {
                                Some(known) if *known != data_type => return None,
                                _ => params[slot] = Some(data_type),
                            }
                            Value::Param(slot)
                        }
                        _ => return None,
                    };
                    constants.push((column, value));
                }
                _ => return None,
            }
        }
        // $1..$n, each used: otherwise the parameters' numbering is not ours to guess.
        let params = params.into_iter().collect::<Option<Vec<_>>>()?;

        let indexed = |(relation, column): ColumnRef| relations[relation].table.is_indexed(column);
        let driver = constants.iter().position(|(column, _)| indexed(*column))?;
        let start = constants[driver].0.0;
        let probe = if relations.len() == 2 {
            let probe = joins.iter().position(|(a, b)| {
                (a.0 == start && indexed(*b)) || (b.0 == start && indexed(*a))
            })?;
            // Orient it: the driving side first.
            let (a, b) = joins[probe];
            if a.0 != start {
                joins[probe] = (b, a);
            }
            Some(probe)
        } else {
            None
        };
        Some(Lookup {
            relations,
            constants,
            joins,
            driver,
            probe,
            output,
            schema: Arc::new(plan.schema().as_arrow().clone()),
            params,
        })
    }

    /// Whether every table is still the one registered under its name: a table replaced
    /// since the statement was prepared (its schema changed) is left to the normal path.
    async fn is_current(&self, ctx: &SessionContext) -> bool {
        for relation in &self.relations {
            match ctx.table_provider(relation.name.clone()).await {
                Ok(provider) => {
                    let registered = Arc::as_ptr(&provider) as *const ();
                    if registered != Arc::as_ptr(&relation.table) as *const () {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// The rows of the lookup with `values` for its parameters; `None` if a parameter's
    /// value is not of its column's kind (DataFusion then decides what `=` means).
    pub fn run(&self, values: &ParamValues) -> Result<Option<RecordBatch>> {
        let mut constants = Vec::with_capacity(self.constants.len());
        for (column, value) in &self.constants {
            let scalar = match value {
                Value::Literal(v) => v.clone(),
                Value::Param(slot) => {
                    let scalar = values
                        .get_placeholders_with_values(&format!("${}", slot + 1))?
                        .value;
                    let column_kind = kind(&self.relations, *column);
                    if !scalar.is_null() && KeyKind::of(&scalar.data_type()) != column_kind {
                        return Ok(None);
                    }
                    scalar
                }
            };
            constants.push((*column, scalar));
        }
        let snapshots = self
            .relations
            .iter()
            .map(|relation| relation.table.snapshot())
            .collect::<Result<Vec<Arc<Snapshot>>>>()?;
        let holds = |rows: &[RowId], relation: usize| {
            constants
                .iter()
                .filter(|((r, _), _)| *r == relation)
                .all(|((r, column), scalar)| {
                    let (batch, row) = rows[*r];
                    let array = snapshots[*r].batches()[batch].column(*column);
                    matches!(
                        (key_at(array.as_ref(), row), Key::of_scalar(scalar)),
                        (Some(a), Some(b)) if a == b
                    )
                })
        };

        let ((start, start_column), scalar) = &constants[self.driver];
        let found = match Key::of_scalar(scalar) {
            Some(key) => snapshots[*start]
                .lookup(*start_column, key)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut matches: Vec<[RowId; 2]> = Vec::new();
        for row in found {
            let mut rows = [row, (0, 0)];
            if *start != 0 {
                rows.swap(0, 1);
            }
            if !holds(&rows, *start) {
                continue;
            }
            let Some(probe) = self.probe else {
                matches.push(rows);
                continue;
            };
            let ((_, from_column), (other, other_column)) = self.joins[probe];
            let (batch, at) = row;
            let array = snapshots[*start].batches()[batch].column(from_column);
            let Some(key) = key_at(array.as_ref(), at) else {
                continue;
            };
            for found in snapshots[other]
                .lookup(other_column, key)
                .unwrap_or_default()
            {
                rows[other] = found;
                if holds(&rows, other) && self.joined(&snapshots, &rows) {
                    matches.push(rows);
                }
            }
        }

        // Per relation, the batches its matched rows are in, and the rows renumbered.
        let taken: Vec<(Vec<usize>, Vec<RowId>)> = (0..self.relations.len())
            .map(|relation| {
                let rows: Vec<RowId> = matches.iter().map(|rows| rows[relation]).collect();
                touched(&rows)
            })
            .collect();
        let columns = self
            .output
            .iter()
            .map(|(relation, column)| {
                let (used, rows) = &taken[*relation];
                if rows.is_empty() {
                    let data_type = self.relations[*relation].schema.field(*column).data_type();
                    return Ok(new_empty_array(data_type));
                }
                let batches = snapshots[*relation].batches();
                let arrays: Vec<&dyn Array> = used
                    .iter()
                    .map(|at| batches[*at].column(*column).as_ref())
                    .collect();
                let data_type = self.relations[*relation].schema.field(*column).data_type();
                as_type(&interleave(&arrays, rows)?, data_type)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            columns,
        )?))
    }

    /// Whether every `column = column` condition holds for a pair of rows.
    fn joined(&self, snapshots: &[Arc<Snapshot>], rows: &[RowId; 2]) -> bool {
        self.joins.iter().all(|(a, b)| {
            let value = |(relation, column): ColumnRef| {
                let (batch, row) = rows[relation];
                key_at(
                    snapshots[relation].batches()[batch].column(column).as_ref(),
                    row,
                )
            };
            matches!((value(*a), value(*b)), (Some(x), Some(y)) if x == y)
        })
    }
}

/// Collects the tables under `plan` and the conditions on them; `None` for anything but
/// filters, inner joins and aliases over unfiltered scans of indexed published tables.
fn flatten(
    plan: &LogicalPlan,
    relations: &mut Vec<Relation>,
    conditions: &mut Vec<Expr>,
) -> Option<()> {
    match plan {
        LogicalPlan::Filter(filter) => {
            conditions.extend(split_conjunction(&filter.predicate).into_iter().cloned());
            flatten(&filter.input, relations, conditions)
        }
        LogicalPlan::Join(join)
            if join.join_type == JoinType::Inner
                && join.null_equality == NullEquality::NullEqualsNothing
                && !join.null_aware =>
        {
            for (left, right) in &join.on {
                conditions.push(left.clone().eq(right.clone()));
            }
            if let Some(filter) = &join.filter {
                conditions.extend(split_conjunction(filter).into_iter().cloned());
            }
            flatten(&join.left, relations, conditions)?;
            flatten(&join.right, relations, conditions)
        }
        LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
            LogicalPlan::TableScan(scan) => {
                relations.push(relation(scan, alias.alias.clone())?);
                Some(())
            }
            _ => None,
        },
        LogicalPlan::TableScan(scan) => {
            relations.push(relation(scan, scan.table_name.clone())?);
            Some(())
        }
        _ => None,
    }
}

fn relation(scan: &TableScan, qualifier: TableReference) -> Option<Relation> {
    if !scan.filters.is_empty() || scan.fetch.is_some() || scan.projection.is_some() {
        return None;
    }
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn std::any::Any + Send + Sync> = provider;
    let table = any.downcast::<PublishedTable>().ok()?;
    let schema = table.schema();
    // Columns with metadata (OID aliases, vectors) have their own wire types: not here.
    if schema.fields().iter().any(|f| !f.metadata().is_empty()) {
        return None;
    }
    Some(Relation {
        name: scan.table_name.clone(),
        qualifier,
        table,
        schema,
    })
}

/// The relation and column `column` names; `None` if none or several do.
fn resolve(relations: &[Relation], column: &Column) -> Option<ColumnRef> {
    let named = relations
        .iter()
        .enumerate()
        .filter(|(_, r)| match &column.relation {
            Some(qualifier) => *qualifier == r.qualifier,
            None => true,
        });
    let mut found = None;
    for (position, relation) in named {
        if let Ok(index) = relation.schema.index_of(&column.name) {
            if found.is_some() {
                // Ambiguous: DataFusion would have refused it; leave it to DataFusion.
                return None;
            }
            found = Some((position, index));
        }
    }
    found
}

fn kind(relations: &[Relation], (relation, column): ColumnRef) -> Option<KeyKind> {
    KeyKind::of(relations[relation].schema.field(column).data_type())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::metadata::ScalarAndMetadata;

    /// `profiles(profile_id, n)` and `ids(profile_id, id_type, id_value)`, indexed as c360
    /// indexes them, and `plain`, a copy of `profiles` without an index.
    fn context() -> SessionContext {
        let profiles = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let rows = RecordBatch::try_new(
            Arc::clone(&profiles),
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2", "p3"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            ],
        )
        .unwrap();
        let ids = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("id_type", DataType::Utf8, false),
            Field::new("id_value", DataType::Utf8, true),
        ]));
        let id_rows = RecordBatch::try_new(
            Arc::clone(&ids),
            vec![
                Arc::new(StringArray::from(vec!["p1", "p1", "p2", "p3", "p9"])),
                Arc::new(StringArray::from(vec![
                    "email", "phone", "email", "email", "email",
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a@x"),
                    Some("a@x"),
                    Some("b@x"),
                    Some("a@x"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        // In two batches each, as a refresh's result comes: rows are found across them.
        let table = |schema: &SchemaRef, rows: &RecordBatch, columns: &[&str]| {
            let half = rows.num_rows() / 2;
            let batches = vec![
                rows.slice(0, half),
                rows.slice(half, rows.num_rows() - half),
            ];
            Arc::new(PublishedTable::indexed(Arc::clone(schema), batches, columns).unwrap())
        };
        ctx.register_table("profiles", table(&profiles, &rows, &["profile_id"]))
            .unwrap();
        ctx.register_table("plain", table(&profiles, &rows, &[]))
            .unwrap();
        ctx.register_table("ids", table(&ids, &id_rows, &["profile_id", "id_value"]))
            .unwrap();
        ctx
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    fn params(values: &[ScalarValue]) -> ParamValues {
        ParamValues::List(
            values
                .iter()
                .map(|v| ScalarAndMetadata::new(v.clone(), None))
                .collect(),
        )
    }

    fn text(batches: &[RecordBatch]) -> String {
        // An empty result prints the same whether it came as no batch or as an empty one.
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        if batches.is_empty() {
            return String::new();
        }
        let mut lines: Vec<String> = pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .filter(|line| line.starts_with('|'))
            .map(str::to_string)
            .collect();
        // The header first, then the rows in a stable order.
        lines[1..].sort();
        lines.join("\n")
    }

    #[tokio::test]
    async fn lookups_answer_what_datafusion_answers() {
        let ctx = context();
        let text_value = |s: Option<&str>| ScalarValue::Utf8(s.map(str::to_string));
        for sql in [
            "SELECT * FROM profiles WHERE profile_id = $1",
            "SELECT n AS count, profile_id FROM profiles p WHERE p.profile_id = $1",
            "SELECT * FROM ids WHERE id_value = $1 AND id_type = 'email'",
            "SELECT p.* FROM profiles p JOIN ids i ON i.profile_id = p.profile_id \
             WHERE i.id_type = 'email' AND i.id_value = $1",
            "SELECT i.id_type, p.n FROM ids i, profiles p \
             WHERE p.profile_id = i.profile_id AND p.profile_id = $1",
        ] {
            let logical = plan(&ctx, sql).await;
            let lookup = Lookup::recognize(&logical).unwrap_or_else(|| panic!("{sql}"));
            for key in [
                Some("p1"),
                Some("p2"),
                Some("a@x"),
                Some("b@x"),
                Some(""),
                None,
            ] {
                let values = params(&[text_value(key)]);
                let fast = lookup.run(&values).unwrap().unwrap();
                let planned = ctx
                    .execute_logical_plan(
                        logical.clone().replace_params_with_values(&values).unwrap(),
                    )
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                assert_eq!(fast.schema(), Arc::new(logical.schema().as_arrow().clone()));
                assert_eq!(
                    text(std::slice::from_ref(&fast)),
                    text(&planned),
                    "{sql} with {key:?}"
                );
            }
            // A parameter of another kind than its column is left to DataFusion.
            let integer = params(&[ScalarValue::Int64(Some(1))]);
            assert!(lookup.run(&integer).unwrap().is_none(), "{sql}");
        }
    }

    #[tokio::test]
    async fn other_plans_are_left_to_datafusion() {
        let ctx = context();
        for sql in [
            "SELECT * FROM profiles WHERE profile_id = $1 LIMIT 1",
            "SELECT * FROM profiles WHERE profile_id || '' = $1",
            "SELECT * FROM profiles WHERE n = $1",
            "SELECT * FROM plain WHERE profile_id = $1",
            "SELECT * FROM profiles WHERE profile_id = $1 OR n = 1",
            "SELECT upper(profile_id) FROM profiles WHERE profile_id = $1",
            "SELECT count(*) FROM profiles WHERE profile_id = $1",
            "SELECT * FROM profiles p LEFT JOIN ids i ON i.profile_id = p.profile_id \
             WHERE p.profile_id = $1",
            // The second table is reached by a column with no index.
            "SELECT * FROM ids i JOIN plain p ON i.profile_id = p.profile_id \
             WHERE i.id_value = $1",
            "SELECT * FROM profiles WHERE profile_id = $2",
        ] {
            assert!(Lookup::recognize(&plan(&ctx, sql).await).is_none(), "{sql}");
        }
    }
}
