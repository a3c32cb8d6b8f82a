//! One-row subqueries evaluated before the query that uses them, as constants.
//!
//! Segments measure time from a clock read out of the data, joined in as one row:
//!
//! ```sql
//! WITH clock AS (SELECT max("timestamp") AS now FROM events)
//! SELECT … FROM events e CROSS JOIN clock WHERE e."timestamp" > clock.now - INTERVAL '30 days'
//! ```
//!
//! Planned as written, that condition is a join filter: every event is paired with the clock
//! in a nested-loop join before it can be dropped, and nothing reaches the Parquet scan, which
//! reads every row group. At 1M profiles one such join took 7 s for 3.4M events, of which 7%
//! passed. Here a cross join whose one side is an aggregate without `GROUP BY` (exactly one
//! row, whatever its input) and reads nothing of the other side is run first, and replaced
//! by the other side with that row's values as constant columns, under the same names. The
//! optimizer then folds `clock.now - INTERVAL '30 days'` into a literal and pushes the
//! condition down to the scan, past joins and unions, like any constant filter.
//!
//! A [`OneRowCache`] keeps the values for one schedule tick, keyed by the subquery's plan and
//! the version of what it reads, so that segments sharing a clock compute it once.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, Filter, JoinType, LogicalPlan, Projection, SubqueryAlias};
use datafusion::prelude::SessionContext;
use tokio::sync::Mutex;

use crate::storage::inputs;

/// Values of one-row subqueries computed during one tick, by plan and input versions.
#[derive(Default)]
pub struct OneRowCache {
    rows: Mutex<HashMap<(LogicalPlan, u64), Arc<Vec<ScalarValue>>>>,
}

impl OneRowCache {
    pub fn new() -> OneRowCache {
        OneRowCache::default()
    }
}

/// `plan` with every cross join against a one-row aggregate replaced by constants (see the
/// module docs); the plan itself when there is none.
pub async fn inline(
    ctx: &SessionContext,
    plan: LogicalPlan,
    cache: &OneRowCache,
) -> Result<LogicalPlan> {
    let mut sides: Vec<LogicalPlan> = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let Some(side) = one_row_side(node)
            && !sides.contains(side)
        {
            sides.push(side.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if sides.is_empty() {
        return Ok(plan);
    }
    let mut values: Vec<(LogicalPlan, Arc<Vec<ScalarValue>>)> = Vec::with_capacity(sides.len());
    for side in sides {
        let row = evaluate(ctx, &side, cache).await?;
        values.push((side, row));
    }
    let rewritten = plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Join(join) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(side) = one_row_side(&node) else {
            return Ok(Transformed::no(node));
        };
        let Some((_, row)) = values.iter().find(|(plan, _)| plan == side) else {
            return Ok(Transformed::no(node));
        };
        let constant_left = std::ptr::eq(side, join.left.as_ref());
        let other = if constant_left {
            Arc::clone(&join.right)
        } else {
            Arc::clone(&join.left)
        };
        let constants = constant_columns(side.schema(), row)?;
        let passed = other
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect::<Vec<_>>();
        let exprs = if constant_left {
            constants.into_iter().chain(passed).collect()
        } else {
            passed.into_iter().chain(constants).collect()
        };
        let mut replaced = LogicalPlan::Projection(Projection::try_new(exprs, other)?);
        if let Some(filter) = &join.filter {
            replaced = LogicalPlan::Filter(Filter::try_new(filter.clone(), Arc::new(replaced))?);
        }
        Ok(Transformed::yes(replaced))
    })?;
    Ok(rewritten.data)
}

/// The one-row side of `node`, if it is an inner join without keys (a cross join, maybe
/// with a filter) one of whose sides is a one-row aggregate.
fn one_row_side(node: &LogicalPlan) -> Option<&LogicalPlan> {
    let LogicalPlan::Join(join) = node else {
        return None;
    };
    if join.join_type != JoinType::Inner || !join.on.is_empty() {
        return None;
    }
    if is_one_row(&join.right) {
        Some(join.right.as_ref())
    } else if is_one_row(&join.left) {
        Some(join.left.as_ref())
    } else {
        None
    }
}

/// Whether `plan` always yields exactly one row and reads nothing from outside itself: an
/// aggregate without groups, under aliases and projections of its own columns.
fn is_one_row(plan: &LogicalPlan) -> bool {
    let mut at = plan;
    loop {
        match at {
            LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => at = input,
            LogicalPlan::Projection(Projection { input, .. }) => at = input,
            LogicalPlan::Aggregate(aggregate) => {
                return aggregate.group_expr.is_empty() && !correlated(plan);
            }
            _ => return false,
        }
    }
}

/// Whether `plan` refers to columns of an enclosing query.
fn correlated(plan: &LogicalPlan) -> bool {
    let mut outer = false;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|expr| {
            let _ = expr.apply(|e| {
                if matches!(e, Expr::OuterReferenceColumn(..)) {
                    outer = true;
                }
                Ok(TreeNodeRecursion::Continue)
            });
            Ok(TreeNodeRecursion::Continue)
        });
        Ok(TreeNodeRecursion::Continue)
    });
    outer
}

/// The one row of `side`, from the cache when its inputs have not changed since.
async fn evaluate(
    ctx: &SessionContext,
    side: &LogicalPlan,
    cache: &OneRowCache,
) -> Result<Arc<Vec<ScalarValue>>> {
    let reads = inputs::inputs_of(side)?;
    let version = inputs::fingerprint(ctx, &reads).await?;
    if let Some(version) = version
        && let Some(row) = cache.rows.lock().await.get(&(side.clone(), version))
    {
        return Ok(Arc::clone(row));
    }
    let batches = ctx
        .execute_logical_plan(side.clone())
        .await?
        .collect()
        .await?;
    let row = Arc::new(only_row(&batches)?);
    if let Some(version) = version {
        cache
            .rows
            .lock()
            .await
            .insert((side.clone(), version), Arc::clone(&row));
    }
    Ok(row)
}

fn only_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>> {
    let mut rows = batches.iter().filter(|batch| batch.num_rows() > 0);
    let (Some(batch), None) = (rows.next(), rows.next()) else {
        return Err(DataFusionError::Internal(
            "a one-row subquery did not return one row".into(),
        ));
    };
    if batch.num_rows() != 1 {
        return Err(DataFusionError::Internal(format!(
            "a one-row subquery returned {} rows",
            batch.num_rows()
        )));
    }
    batch
        .columns()
        .iter()
        .map(|column| ScalarValue::try_from_array(column, 0))
        .collect()
}

/// `row` as literal columns named and typed as `schema`'s fields, with their qualifiers, so
/// that whatever referred to the subquery's columns refers to the constants.
fn constant_columns(schema: &DFSchemaRef, row: &[ScalarValue]) -> Result<Vec<Expr>> {
    if schema.fields().len() != row.len() {
        return Err(DataFusionError::Internal(format!(
            "a one-row subquery returned {} columns for {}",
            row.len(),
            schema.fields().len()
        )));
    }
    schema
        .iter()
        .zip(row)
        .map(|((qualifier, field), value)| {
            let value = value.cast_to(field.data_type())?;
            Ok(Expr::Literal(value, None).alias_qualified(qualifier.cloned(), field.name()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    async fn context() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE events AS SELECT * FROM (VALUES \
             ('a', 1), ('a', 5), ('b', 9), ('c', 10), ('c', NULL)) AS t(who, at)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        ctx
    }

    async fn both_ways(ctx: &SessionContext, sql: &str) -> (String, String, LogicalPlan) {
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.logical_plan().clone();
        let expected = frame.collect().await.unwrap();
        let inlined = inline(ctx, plan, &OneRowCache::new()).await.unwrap();
        let got = ctx
            .execute_logical_plan(inlined.clone())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        // An empty result prints the same whether it came as no batch or as an empty one.
        let text = |mut batches: Vec<RecordBatch>| {
            batches.retain(|b| b.num_rows() > 0);
            pretty_format_batches(&batches).unwrap().to_string()
        };
        (text(expected), text(got), inlined)
    }

    fn has_cross_join(plan: &LogicalPlan) -> bool {
        let mut found = false;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::Join(join) = node
                && join.on.is_empty()
            {
                found = true;
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    #[tokio::test]
    async fn a_clock_joined_in_becomes_constants_with_the_same_result() {
        let ctx = context().await;
        for sql in [
            "WITH clock AS (SELECT max(at) AS now FROM events) \
             SELECT who, at, clock.now FROM events CROSS JOIN clock WHERE at > clock.now - 6 ORDER BY who, at",
            "SELECT who FROM (SELECT max(at) AS now, min(at) AS first FROM events) clock, events \
             WHERE at BETWEEN clock.first + 1 AND clock.now - 1 ORDER BY who",
            // In a subquery too.
            "SELECT DISTINCT who FROM events WHERE who NOT IN (SELECT e.who FROM events e, \
             (SELECT max(at) AS now FROM events) c WHERE e.at = c.now) ORDER BY who",
        ] {
            let (expected, got, plan) = both_ways(&ctx, sql).await;
            assert_eq!(expected, got, "{sql}");
            assert!(!has_cross_join(&plan), "{sql}\n{plan}");
        }
    }

    #[tokio::test]
    async fn grouped_or_correlated_subqueries_are_left_alone() {
        let ctx = context().await;
        let sql = "SELECT e.who FROM events e, (SELECT who, max(at) AS now FROM events GROUP BY who) c \
                   WHERE e.who = c.who AND e.at = c.now ORDER BY e.who";
        let (expected, got, plan) = both_ways(&ctx, sql).await;
        assert_eq!(expected, got);
        assert!(has_cross_join(&plan) || format!("{plan}").contains("Join"));
        // An empty input still gives the aggregate its one row (of NULLs): nothing passes.
        let sql = "SELECT who FROM events, (SELECT max(at) AS now FROM events WHERE at > 100) c \
                   WHERE at > c.now";
        let (expected, got, _) = both_ways(&ctx, sql).await;
        assert_eq!(expected, got);
    }

    #[tokio::test]
    async fn a_tick_computes_a_shared_clock_once_per_version_of_its_input() {
        use crate::storage::published::PublishedTable;
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("at", DataType::Int64, true)]));
        let rows = |values: Vec<i64>| {
            vec![
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(Int64Array::from(values))],
                )
                .unwrap(),
            ]
        };
        let table =
            Arc::new(PublishedTable::new(Arc::clone(&schema), rows(vec![1, 2, 3])).unwrap());
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::clone(&table) as _).unwrap();
        let cache = OneRowCache::new();
        async fn run(ctx: &SessionContext, cache: &OneRowCache) -> String {
            let sql = "SELECT at FROM t, (SELECT max(at) AS now FROM t) c WHERE at = c.now";
            let plan = ctx.sql(sql).await.unwrap().logical_plan().clone();
            let plan = inline(ctx, plan, cache).await.unwrap();
            let batches = ctx
                .execute_logical_plan(plan)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            pretty_format_batches(&batches).unwrap().to_string()
        }
        let first = run(&ctx, &cache).await;
        assert_eq!(run(&ctx, &cache).await, first);
        assert_eq!(cache.rows.lock().await.len(), 1, "computed once");
        // New contents, new version: the clock is computed again, never read stale.
        table.publish(rows(vec![7, 9])).unwrap();
        let after = run(&ctx, &cache).await;
        assert!(after.contains('9') && !after.contains('3'), "{after}");
        assert_eq!(cache.rows.lock().await.len(), 2);
    }
}
