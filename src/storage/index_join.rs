//! Joins answered from a published table's index: each row of the other side looks its key
//! up, instead of a hash table being built over the whole published table for every query.
//!
//! The identity graph's `customers_records` holds one row per source record (15M at 1M
//! customers), and every attribution of events or sales to profiles joins it on
//! `record_key`. A hash join builds over the smaller side and probes with the other; either
//! way it hashes all 15M keys on every query, and repartitions them across cores first: 4 to
//! 7 s per join at 1M customers, however few events the query keeps. A published table can
//! instead keep a [`KeyIndex`] on such a column, built once per publication (lazily, on the
//! first join that uses it, see [`super::published::PublishedTable::with_join_index`]), and
//! an inner equi-join on that column becomes an [`IndexJoinExec`]: the other side's rows
//! look their keys up, and only the matching rows of the table are read.
//!
//! [`IndexJoinRule`] makes the swap right after DataFusion's join selection, before
//! distribution and ordering are enforced, so that those are planned around the new
//! operator. It applies to inner joins on one key, without a join filter, where one side is a
//! published table's scan (maybe under a projection of its columns) whose key column has an
//! index, and where the other side is not much larger than the table (for a small table and
//! a large other side, hashing the table is the cheaper way).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality, Statistics};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::projection::update_expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::index::{KeyIndex, KeyKind, RowId, key_at, take_rows};
use super::published::Snapshot;

/// How much larger than the table the other side may be for a lookup per row to beat hashing
/// the table (a lookup costs about what inserting a row into a hash table does).
const MAX_PROBE_RATIO: usize = 4;

/// A scan of one publication of a [`super::published::PublishedTable`] that has indexes: it
/// reads like the memory scan it wraps, and tells [`IndexJoinRule`] which publication, which
/// columns and which indexes are behind it.
#[derive(Debug)]
pub struct PublishedScanExec {
    pub(super) snapshot: Arc<Snapshot>,
    /// The table's schema (before projection).
    pub(super) table_schema: SchemaRef,
    /// The table columns the scan yields, in order.
    pub(super) projection: Option<Vec<usize>>,
    /// Whether a limit was pushed into the scan (it then reads fewer rows than the table).
    pub(super) limited: bool,
    pub(super) inner: Arc<dyn ExecutionPlan>,
}

impl PublishedScanExec {
    /// The table column behind output column `column`.
    fn table_column(&self, column: usize) -> Option<usize> {
        match &self.projection {
            Some(projection) => projection.get(column).copied(),
            None => Some(column),
        }
    }
}

impl DisplayAs for PublishedScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PublishedScanExec: ")?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for PublishedScanExec {
    fn name(&self) -> &'static str {
        "PublishedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn repartitioned(
        &self,
        target_partitions: usize,
        config: &ConfigOptions,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        Ok(self
            .inner
            .repartitioned(target_partitions, config)?
            .map(|inner| {
                Arc::new(PublishedScanExec {
                    snapshot: Arc::clone(&self.snapshot),
                    table_schema: Arc::clone(&self.table_schema),
                    projection: self.projection.clone(),
                    limited: self.limited,
                    inner,
                }) as Arc<dyn ExecutionPlan>
            }))
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.inner.statistics_from_inputs(input_stats, args)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }
}

/// The published side of a join, as [`IndexJoinRule`] found it.
struct IndexedSide {
    scan: Arc<PublishedScanExec>,
    /// The indexed table column the join matches on.
    column: usize,
    /// The side's columns as the join saw them, computed from the scan's output.
    exprs: Vec<Arc<dyn PhysicalExpr>>,
}

/// Whether `side` (a join input) is a published scan, maybe under a projection, whose output
/// column that `key` reads is an indexed column of the table, maybe cast to another string
/// type (which keeps every value as it is).
fn indexed_side(side: &Arc<dyn ExecutionPlan>, key: &Arc<dyn PhysicalExpr>) -> Option<IndexedSide> {
    let mut at = Arc::clone(side);
    let mut projection: Option<Vec<Arc<dyn PhysicalExpr>>> = None;
    loop {
        if let Some(repartition) = at.downcast_ref::<RepartitionExec>() {
            at = Arc::clone(repartition.input());
        } else if let Some(coalesce) = at.downcast_ref::<CoalescePartitionsExec>() {
            at = Arc::clone(coalesce.input());
        } else if let Some(project) = at.downcast_ref::<ProjectionExec>() {
            // Projections in a row (a query's over the table's decoding one, see
            // `PublishedTable::stored`) compose into one over the scan.
            projection = Some(match projection {
                None => project.expr().iter().map(|p| Arc::clone(&p.expr)).collect(),
                Some(outer) => outer
                    .iter()
                    .map(|expr| update_expr(expr, project.expr(), true).ok().flatten())
                    .collect::<Option<Vec<_>>>()?,
            });
            at = Arc::clone(project.input());
        } else {
            break;
        }
    }
    let scan = at.downcast_ref::<PublishedScanExec>()?;
    if scan.limited {
        return None;
    }
    let scan = Arc::new(PublishedScanExec {
        snapshot: Arc::clone(&scan.snapshot),
        table_schema: Arc::clone(&scan.table_schema),
        projection: scan.projection.clone(),
        limited: scan.limited,
        inner: Arc::clone(&scan.inner),
    });
    let key_column = string_preserving_column(key)?;
    let (exprs, scan_column) = match projection {
        Some(exprs) => {
            let scan_column = string_preserving_column(exprs.get(key_column.index())?)?.index();
            (exprs, scan_column)
        }
        None => {
            let exprs = scan
                .schema()
                .fields()
                .iter()
                .enumerate()
                .map(|(i, field)| Arc::new(Column::new(field.name(), i)) as Arc<dyn PhysicalExpr>)
                .collect();
            (exprs, key_column.index())
        }
    };
    let column = scan.table_column(scan_column)?;
    scan.snapshot.has_join_index(column).then_some(IndexedSide {
        scan,
        column,
        exprs,
    })
}

/// The column `expr` reads, if it is a column or a column cast between string types.
fn string_preserving_column(expr: &Arc<dyn PhysicalExpr>) -> Option<&Column> {
    if let Some(column) = expr.downcast_ref::<Column>() {
        return Some(column);
    }
    let cast = expr.downcast_ref::<CastExpr>()?;
    let is_string = |t: &DataType| KeyKind::of(t) == Some(KeyKind::String);
    let column = cast.expr().downcast_ref::<Column>()?;
    // The input type is not known here without a schema; the table's column type is checked
    // when the key kinds are compared in `IndexJoinRule`.
    is_string(cast.cast_type()).then_some(column)
}

fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|stats| stats.num_rows.get_value().copied())
}

/// Swaps eligible hash joins for [`IndexJoinExec`]s (see the module docs).
#[derive(Debug, Default)]
pub struct IndexJoinRule;

impl IndexJoinRule {
    /// Where the rule goes among DataFusion's: right after this one.
    pub const AFTER: &'static str = "join_selection";

    fn swap(join: &HashJoinExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if *join.join_type() != JoinType::Inner
            || join.filter().is_some()
            || join.on().len() != 1
            || join.null_equality() != NullEquality::NullEqualsNothing
        {
            return Ok(None);
        }
        let (left_key, right_key) = &join.on()[0];
        let candidates = [
            (join.left(), left_key, join.right(), right_key, false),
            (join.right(), right_key, join.left(), left_key, true),
        ];
        for (side, key, probe, probe_key, probe_is_left) in candidates {
            let Some(indexed) = indexed_side(side, key) else {
                continue;
            };
            let table_rows = indexed.scan.snapshot.num_rows();
            if estimated_rows(probe).is_some_and(|rows| rows > table_rows * MAX_PROBE_RATIO) {
                continue;
            }
            let column_type = indexed.scan.table_schema.field(indexed.column).data_type();
            let probe_type = probe_key.data_type(&probe.schema())?;
            if KeyKind::of(column_type).is_none()
                || KeyKind::of(column_type) != KeyKind::of(&probe_type)
            {
                continue;
            }
            // The probe side as it was before the join asked for one partition of it.
            let probe = match probe.downcast_ref::<CoalescePartitionsExec>() {
                Some(coalesce) => Arc::clone(coalesce.input()),
                None => Arc::clone(probe),
            };
            return Ok(Some(Arc::new(IndexJoinExec::new(
                probe,
                Arc::clone(probe_key),
                probe_is_left,
                indexed,
                join.projection.as_deref().map(<[usize]>::to_vec),
                join.schema(),
            ))));
        }
        Ok(None)
    }
}

impl PhysicalOptimizerRule for IndexJoinRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<HashJoinExec>() {
            Some(join) => Ok(match Self::swap(join)? {
                Some(swapped) => Transformed::yes(swapped),
                None => Transformed::no(node),
            }),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "index_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An inner equi-join whose one side is read through an index: each probe row's key is
/// looked up, and the matching rows of the table are taken.
#[derive(Debug)]
pub struct IndexJoinExec {
    probe: Arc<dyn ExecutionPlan>,
    probe_key: Arc<dyn PhysicalExpr>,
    probe_is_left: bool,
    scan: Arc<PublishedScanExec>,
    column: usize,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl IndexJoinExec {
    fn new(
        probe: Arc<dyn ExecutionPlan>,
        probe_key: Arc<dyn PhysicalExpr>,
        probe_is_left: bool,
        side: IndexedSide,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
    ) -> IndexJoinExec {
        let partitions = probe.properties().partitioning.partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        IndexJoinExec {
            probe,
            probe_key,
            probe_is_left,
            scan: side.scan,
            column: side.column,
            exprs: side.exprs,
            projection,
            schema,
            properties: Arc::new(properties),
        }
    }

    /// The output rows for one probe batch.
    fn join_batch(&self, index: &KeyIndex, batch: &RecordBatch) -> Result<RecordBatch> {
        let keys = self
            .probe_key
            .evaluate(batch)?
            .into_array(batch.num_rows())?;
        let rows = self.scan.snapshot.batches();
        let mut probe_rows: Vec<u32> = Vec::new();
        let mut found: Vec<RowId> = Vec::new();
        for row in 0..batch.num_rows() {
            let Some(key) = key_at(keys.as_ref(), row) else {
                continue;
            };
            for hit in index.lookup(rows, key) {
                probe_rows.push(row as u32);
                found.push(hit);
            }
        }
        let indices = UInt32Array::from(probe_rows);
        let probed: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|column| take(column, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let scanned = take_rows(
            &self.scan.table_schema,
            rows,
            &found,
            self.scan.projection.as_deref(),
        )?;
        let published: Vec<ArrayRef> = self
            .exprs
            .iter()
            .map(|expr| expr.evaluate(&scanned)?.into_array(scanned.num_rows()))
            .collect::<Result<_>>()?;
        let all: Vec<ArrayRef> = if self.probe_is_left {
            probed.into_iter().chain(published).collect()
        } else {
            published.into_iter().chain(probed).collect()
        };
        let columns = match &self.projection {
            Some(projection) => projection
                .iter()
                .map(|i| {
                    all.get(*i).cloned().ok_or_else(|| {
                        DataFusionError::Internal(format!("index join: no column {i}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => all,
        };
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

impl DisplayAs for IndexJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "IndexJoinExec: on={} = {} (indexed), rows={}",
            self.probe_key,
            self.scan.table_schema.field(self.column).name(),
            self.scan.snapshot.num_rows()
        )
    }
}

impl ExecutionPlan for IndexJoinExec {
    fn name(&self) -> &'static str {
        "IndexJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.probe]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.probe_key)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [probe] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("IndexJoinExec has one child".into()))?;
        Ok(Arc::new(IndexJoinExec::new(
            probe,
            Arc::clone(&self.probe_key),
            self.probe_is_left,
            IndexedSide {
                scan: Arc::clone(&self.scan),
                column: self.column,
                exprs: self.exprs.clone(),
            },
            self.projection.clone(),
            Arc::clone(&self.schema),
        )))
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        #[expect(deprecated)]
        self.with_new_children(children)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let probe = self.probe.execute(partition, context)?;
        let this = Arc::new(IndexJoinExec {
            probe: Arc::clone(&self.probe),
            probe_key: Arc::clone(&self.probe_key),
            probe_is_left: self.probe_is_left,
            scan: Arc::clone(&self.scan),
            column: self.column,
            exprs: self.exprs.clone(),
            projection: self.projection.clone(),
            schema: Arc::clone(&self.schema),
            properties: Arc::clone(&self.properties),
        });
        // The index may not be built yet (it is built on first use): a blocking thread
        // builds it, so that the async workers keep running other work meanwhile.
        let snapshot = Arc::clone(&self.scan.snapshot);
        let column = self.column;
        let index = futures::stream::once(async move {
            tokio::task::spawn_blocking(move || snapshot.join_index(column))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        });
        // Runs once (the index stream has one item), and takes the probe stream then.
        let mut probe = Some(probe);
        let joined = index
            .map_ok(move |index| {
                let this = Arc::clone(&this);
                futures::stream::iter(probe.take())
                    .flatten()
                    .map(move |batch| this.join_batch(&index, &batch?))
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            joined,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::published::PublishedTable;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    /// `records(record_key, profile_id)`: 1000 records, two batches, the key indexed for joins.
    fn records() -> PublishedTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("record_key", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
        ]));
        let batch = |range: std::ops::Range<usize>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        range.clone().map(|i| format!("web:m{i}")),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        range.map(|i| format!("p{}", i % 300)),
                    )),
                ],
            )
            .unwrap()
        };
        PublishedTable::new(Arc::clone(&schema), vec![batch(0..600), batch(600..1000)])
            .unwrap()
            .with_join_index(&["record_key"])
            .unwrap()
    }

    fn context(with_rule: bool) -> SessionContext {
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        if with_rule {
            let at = rules
                .iter()
                .position(|rule| rule.name() == IndexJoinRule::AFTER)
                .map_or(rules.len(), |i| i + 1);
            rules.insert(at, Arc::new(IndexJoinRule));
        }
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_table("records", Arc::new(records())).unwrap();
        let events = Arc::new(Schema::new(vec![
            Field::new("message_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        // Some messages match no record, one matches twice-named keys, one is NULL.
        let ids: Vec<Option<String>> = (0..50)
            .map(|i| Some(format!("m{}", i * 37)))
            .chain([None, Some("m5".into()), Some("nobody".into())])
            .collect();
        let n = Int64Array::from_iter_values(0..ids.len() as i64);
        let batch = RecordBatch::try_new(
            Arc::clone(&events),
            vec![Arc::new(StringArray::from(ids)), Arc::new(n)],
        )
        .unwrap();
        ctx.register_batch("events", batch).unwrap();
        ctx
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> String {
        let mut batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        batches.retain(|b| b.num_rows() > 0);
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn joins_on_an_indexed_key_read_the_index_and_agree_with_a_hash_join() {
        let (indexed, hashed) = (context(true), context(false));
        for sql in [
            // The key computed on the other side, compared as another string type.
            "SELECT r.profile_id, e.n FROM events e JOIN records r ON r.record_key = 'web:' || e.message_id ORDER BY e.n, r.profile_id",
            // The published table on the left, some of its columns only.
            "SELECT e.n, r.record_key FROM records r JOIN events e ON 'web:' || e.message_id = r.record_key WHERE e.n > 3 ORDER BY e.n",
            // Grouped on top, as segments do.
            "SELECT r.profile_id, count(*) AS c FROM events e JOIN records r ON r.record_key = 'web:' || e.message_id GROUP BY 1 ORDER BY 1",
        ] {
            let plan = rows(&indexed, &format!("EXPLAIN {sql}")).await;
            assert!(plan.contains("IndexJoinExec"), "{sql}\n{plan}");
            assert_eq!(rows(&indexed, sql).await, rows(&hashed, sql).await, "{sql}");
        }
        // Not an indexed column: a hash join, as before.
        let sql = "SELECT e.n FROM events e JOIN records r ON r.profile_id = e.message_id";
        assert!(
            !rows(&indexed, &format!("EXPLAIN {sql}"))
                .await
                .contains("IndexJoinExec")
        );
        // Not an inner join: a hash join.
        let sql =
            "SELECT e.n FROM events e LEFT JOIN records r ON r.record_key = 'web:' || e.message_id";
        assert!(
            !rows(&indexed, &format!("EXPLAIN {sql}"))
                .await
                .contains("IndexJoinExec")
        );
        assert_eq!(
            rows(&indexed, sql).await.len(),
            rows(&hashed, sql).await.len()
        );
    }
}
