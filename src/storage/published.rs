//! A table whose whole contents are swapped in one step, so that readers always see the last
//! committed result (never a half-refreshed one) and never find the table missing.
//!
//! A table can be indexed on key columns (see [`super::index`]): the indexes are built with
//! each publication, before the swap, and swapped with the contents, so a lookup reads the
//! old or the new result, never a mix. An equality (`col = 'x'`, `col IN ('x', 'y')`) on an
//! indexed column is then answered from the index by an `IndexLookupExec` that holds only the
//! matching rows, instead of a scan of every row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use datafusion::scalar::ScalarValue;

use super::index::{Changes, Key, KeyIndex, KeyKind, RowId, take_rows};
use super::index_join::PublishedScanExec;

/// Publication counter shared by every table, starting from the clock so that a generation
/// is never reused, even across restarts: a new generation always means new contents.
static NEXT_GENERATION: LazyLock<AtomicU64> = LazyLock::new(|| {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    AtomicU64::new(nanos)
});

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug)]
pub struct PublishedTable {
    /// What SQL sees: `stored`, with dictionary-encoded columns as their values' type.
    schema: SchemaRef,
    /// What the batches hold. A column can be dictionary-encoded to save memory (the identity
    /// graph's profile ids: a 4-byte key per row into one dictionary of a million ids), and
    /// is decoded as it is read (see `decoded_plan`): DataFusion's operators copy or re-hash
    /// a dictionary's whole values per batch, and with the dictionary left in its joins and
    /// groups the demo's `profiles` view took 263 s to refresh at 1M customers, against 35 s.
    stored: SchemaRef,
    /// The indexed columns, fixed for the table's life so that a plan made against one
    /// publication stays valid for the next.
    indexed: Vec<usize>,
    /// Columns indexed for joins only, on the first join that needs it (see
    /// [`super::index_join`]).
    joinable: Vec<usize>,
    current: RwLock<Arc<Snapshot>>,
}

/// An index built on first use, or the reason it could not be.
type LazyIndex = OnceLock<std::result::Result<Arc<KeyIndex>, String>>;

/// One publication: its rows and their indexes, read together.
#[derive(Debug)]
pub struct Snapshot {
    table: Arc<MemTable>,
    batches: Vec<RecordBatch>,
    indexes: Vec<Arc<KeyIndex>>,
    lazy: Vec<(usize, LazyIndex)>,
    rows: usize,
    generation: u64,
}

/// The indexes on `columns`, each on a thread of its own: each one is a pass of random
/// inserts over every row (about a second per index at 4M rows), and a publication waits
/// for all of them.
fn build_indexes(batches: &[RecordBatch], columns: &[usize]) -> Result<Vec<Arc<KeyIndex>>> {
    if columns.len() < 2 {
        return columns
            .iter()
            .map(|column| KeyIndex::build(batches, *column).map(Arc::new))
            .collect();
    }
    std::thread::scope(|scope| {
        let builds: Vec<_> = columns
            .iter()
            .map(|column| scope.spawn(move || KeyIndex::build(batches, *column).map(Arc::new)))
            .collect();
        builds
            .into_iter()
            .map(|build| {
                build.join().unwrap_or_else(|_| {
                    Err(DataFusionError::Internal(
                        "building an index panicked".into(),
                    ))
                })
            })
            .collect()
    })
}

/// The indexes of `previous` carried over to `batches` (see [`KeyIndex::carried`]), each on
/// a thread of its own as [`build_indexes`] does.
fn carry_indexes(
    previous: &[Arc<KeyIndex>],
    batches: &[RecordBatch],
    changes: &Changes,
) -> Result<Vec<Arc<KeyIndex>>> {
    std::thread::scope(|scope| {
        let carries: Vec<_> = previous
            .iter()
            .map(|index| scope.spawn(move || index.carried(batches, changes).map(Arc::new)))
            .collect();
        carries
            .into_iter()
            .map(|carry| {
                carry.join().unwrap_or_else(|_| {
                    Err(DataFusionError::Internal(
                        "carrying an index over panicked".into(),
                    ))
                })
            })
            .collect()
    })
}

impl Snapshot {
    /// The next publication after `previous`, related to it by `changes`: indexes, and the
    /// join indexes `previous` had built, are carried over rather than built again.
    fn carried(
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        previous: &Snapshot,
        changes: &Changes,
    ) -> Result<Snapshot> {
        let built: Vec<Arc<KeyIndex>> = previous
            .lazy
            .iter()
            .filter_map(|(_, lazy)| lazy.get().and_then(|built| built.as_ref().ok()).cloned())
            .collect();
        let indexes = carry_indexes(&previous.indexes, &batches, changes)?;
        let joins = carry_indexes(&built, &batches, changes)?;
        let lazy = previous
            .lazy
            .iter()
            .map(|(column, _)| {
                let lazy = OnceLock::new();
                if let Some(index) = joins.iter().find(|index| index.column() == *column) {
                    let _ = lazy.set(Ok(Arc::clone(index)));
                }
                (*column, lazy)
            })
            .collect();
        Ok(Snapshot {
            table: Arc::new(MemTable::try_new(schema.clone(), vec![batches.clone()])?),
            rows: batches.iter().map(RecordBatch::num_rows).sum(),
            batches,
            indexes,
            lazy,
            generation: next_generation(),
        })
    }

    fn new(
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        indexed: &[usize],
        joinable: &[usize],
    ) -> Result<Snapshot> {
        let indexes = build_indexes(&batches, indexed)?;
        Ok(Snapshot {
            table: Arc::new(MemTable::try_new(schema.clone(), vec![batches.clone()])?),
            rows: batches.iter().map(RecordBatch::num_rows).sum(),
            batches,
            indexes,
            lazy: joinable
                .iter()
                .map(|column| (*column, OnceLock::new()))
                .collect(),
            generation: next_generation(),
        })
    }

    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Whether a join on `column` can read an index (built already or on first use).
    pub fn has_join_index(&self, column: usize) -> bool {
        self.indexes.iter().any(|index| index.column() == column)
            || self.lazy.iter().any(|(lazy, _)| *lazy == column)
    }

    /// The index on `column`, built now if it is built on first use. Blocks while it is
    /// built (by this caller or another): call it off the async workers.
    pub fn join_index(&self, column: usize) -> Result<Arc<KeyIndex>> {
        if let Some(index) = self.indexes.iter().find(|index| index.column() == column) {
            return Ok(Arc::clone(index));
        }
        let (_, lazy) = self
            .lazy
            .iter()
            .find(|(lazy, _)| *lazy == column)
            .ok_or_else(|| DataFusionError::Internal(format!("no index on column {column}")))?;
        lazy.get_or_init(|| {
            KeyIndex::build(&self.batches, column)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(DataFusionError::Execution)
    }

    /// The rows whose `column` equals `key`, in table order; `None` if `column` has no index.
    pub fn lookup(&self, column: usize, key: Key<'_>) -> Option<Vec<RowId>> {
        self.indexes
            .iter()
            .find(|index| index.column() == column)
            .map(|index| index.lookup(&self.batches, key))
    }
}

impl PublishedTable {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<PublishedTable> {
        PublishedTable::indexed(schema, batches, &[])
    }

    /// A table with hash indexes on `columns`, which must be strings or integers.
    pub fn indexed(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        columns: &[&str],
    ) -> Result<PublishedTable> {
        let indexed = columns
            .iter()
            .map(|name| {
                let column = schema.index_of(name)?;
                match KeyKind::of(schema.field(column).data_type()) {
                    Some(_) => Ok(column),
                    None => Err(DataFusionError::Plan(format!(
                        "cannot index column {name} of type {}",
                        schema.field(column).data_type()
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PublishedTable {
            current: RwLock::new(Arc::new(Snapshot::new(&schema, batches, &indexed, &[])?)),
            indexed,
            joinable: Vec::new(),
            schema: decoded_schema(&schema),
            stored: schema,
        })
    }

    /// The same table, with `columns` indexed for joins (see [`super::index_join`]): each
    /// publication's index is built by the first join that reads it, not when published,
    /// so a table that is joined seldom or never costs nothing more to publish.
    pub fn with_join_index(mut self, columns: &[&str]) -> Result<PublishedTable> {
        for name in columns {
            let column = self.schema.index_of(name)?;
            if KeyKind::of(self.schema.field(column).data_type()).is_none() {
                return Err(DataFusionError::Plan(format!(
                    "cannot index column {name} of type {}",
                    self.schema.field(column).data_type()
                )));
            }
            if !self.indexed.contains(&column) && !self.joinable.contains(&column) {
                self.joinable.push(column);
            }
        }
        let batches = self.batches()?;
        self.current = RwLock::new(Arc::new(Snapshot::new(
            &self.stored,
            batches,
            &self.indexed,
            &self.joinable,
        )?));
        Ok(self)
    }

    /// Replaces the contents and their indexes; scans already planned keep reading the
    /// previous ones. The indexes are built before the lock is taken: readers never wait
    /// for a build.
    pub fn publish(&self, batches: Vec<RecordBatch>) -> Result<()> {
        self.swap_in(Snapshot::new(
            &self.stored,
            batches,
            &self.indexed,
            &self.joinable,
        )?)
    }

    fn swap_in(&self, snapshot: Snapshot) -> Result<()> {
        let mut current = self
            .current
            .write()
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))?;
        *current = Arc::new(snapshot);
        Ok(())
    }

    /// [`PublishedTable::publish`] for contents that follow the current ones with `changes`
    /// (rows kept at their numbers, some of them changed, others added): the indexes are
    /// carried over and extended, in time proportional to the change, not the table. The
    /// caller publishes one change at a time: `changes` is relative to the current contents.
    pub fn publish_changed(&self, batches: Vec<RecordBatch>, changes: &Changes) -> Result<()> {
        let previous = self.snapshot()?;
        self.swap_in(Snapshot::carried(
            &self.stored,
            batches,
            &previous,
            changes,
        )?)
    }

    /// Changes whenever the contents are published, and only then.
    pub fn generation(&self) -> u64 {
        self.current.read().map_or(0, |current| current.generation)
    }

    /// The current contents (cheap: the arrays are shared, not copied).
    pub fn batches(&self) -> Result<Vec<RecordBatch>> {
        Ok(self.snapshot()?.batches.clone())
    }

    /// The current publication, rows and indexes together.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>> {
        self.current
            .read()
            .map(|current| Arc::clone(&current))
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))
    }

    /// Whether `column` has an index.
    pub fn is_indexed(&self, column: usize) -> bool {
        self.indexed.contains(&column)
    }

    /// The indexed column and the keys an equality filter looks up, if the index can answer
    /// it exactly.
    fn indexed_equality<'a>(&self, filter: &'a Expr) -> Option<(usize, Vec<&'a ScalarValue>)> {
        let (column, values) = equalities(filter)?;
        let index = self.schema.index_of(&column.name).ok()?;
        if !self.is_indexed(index) {
            return None;
        }
        // Across kinds (a string column against an integer) SQL coerces; DataFusion decides.
        let kind = KeyKind::of(self.schema.field(index).data_type());
        values
            .iter()
            .all(|v| KeyKind::of(&v.data_type()) == kind)
            .then_some((index, values))
    }
}

/// The column and values of `col = v`, `col IN (v, …)`, or a disjunction of those on one
/// column (the optimizer turns short IN lists into ORs).
fn equalities(filter: &Expr) -> Option<(&datafusion::common::Column, Vec<&ScalarValue>)> {
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                Some((c, vec![v]))
            }
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let (column, mut values) = equalities(left)?;
            let (other, more) = equalities(right)?;
            if column != other {
                return None;
            }
            values.extend(more);
            Some((column, values))
        }
        Expr::InList(list) if !list.negated => match list.expr.as_ref() {
            Expr::Column(c) => {
                let values = list
                    .list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) => Some(v),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((c, values))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `schema` as SQL sees it: dictionary-encoded columns as their values' type.
fn decoded_schema(schema: &SchemaRef) -> SchemaRef {
    if !schema.fields().iter().any(|field| is_dictionary(field)) {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Dictionary(_, value) => field.as_ref().clone().with_data_type(*value.clone()),
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn is_dictionary(field: &Field) -> bool {
    matches!(field.data_type(), DataType::Dictionary(..))
}

/// `plan` with its dictionary-encoded columns decoded (see `PublishedTable::stored`).
fn decoded_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    if !schema.fields().iter().any(|field| is_dictionary(field)) {
        return Ok(plan);
    }
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), i));
            let expr: Arc<dyn PhysicalExpr> = match field.data_type() {
                DataType::Dictionary(_, value) => {
                    Arc::new(CastExpr::new(column, *value.clone(), None))
                }
                _ => column,
            };
            (expr, field.name().clone())
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

#[async_trait]
impl TableProvider for PublishedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.snapshot()?;
        let lookups: Vec<(usize, Vec<&ScalarValue>)> = filters
            .iter()
            .filter_map(|filter| self.indexed_equality(filter))
            .collect();
        if lookups.is_empty() {
            let inner = snapshot
                .table
                .scan(state, projection, filters, limit)
                .await?;
            if self.indexed.is_empty() && self.joinable.is_empty() {
                return decoded_plan(inner);
            }
            // Marked, so that a join on an indexed column can read the index instead (under
            // the decoding projection, which the join reads through).
            return decoded_plan(Arc::new(PublishedScanExec {
                snapshot: Arc::clone(&snapshot),
                table_schema: self.stored.clone(),
                projection: projection.cloned(),
                limited: limit.is_some(),
                inner,
            }));
        }
        // Every filter pushed here was declared Exact, so every one is applied: the rows of
        // the first, kept where the others hold too.
        let mut rows: Option<Vec<RowId>> = None;
        for (column, values) in &lookups {
            let mut found: Vec<RowId> = values
                .iter()
                .filter_map(|value| Key::of_scalar(value))
                .filter_map(|key| snapshot.lookup(*column, key))
                .flatten()
                .collect();
            found.sort_unstable();
            found.dedup();
            rows = Some(match rows {
                None => found,
                Some(before) => before
                    .into_iter()
                    .filter(|row| found.binary_search(row).is_ok())
                    .collect(),
            });
        }
        let mut rows = rows.unwrap_or_default();
        if let Some(limit) = limit {
            rows.truncate(limit);
        }
        let batch = take_rows(
            &self.schema,
            &snapshot.batches,
            &rows,
            projection.map(Vec::as_slice),
        )?;
        let described = filters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" AND ");
        Ok(Arc::new(IndexLookupExec::new(batch, described)))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match self.indexed_equality(filter) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }
}

/// The rows an index lookup found, already taken and projected. It shows in `EXPLAIN` with
/// the filters it answered, so that a user can see a lookup is not a scan.
#[derive(Debug)]
pub struct IndexLookupExec {
    batch: RecordBatch,
    filters: String,
    properties: Arc<PlanProperties>,
}

impl IndexLookupExec {
    fn new(batch: RecordBatch, filters: String) -> IndexLookupExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(batch.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        // It yields its one batch at once: nothing for DataFusion to wrap for cooperation.
        .with_scheduling_type(SchedulingType::Cooperative);
        IndexLookupExec {
            batch,
            filters,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for IndexLookupExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "IndexLookupExec: {}, rows={}",
                self.filters,
                self.batch.num_rows()
            ),
            DisplayFormatType::TreeRender => write!(f, "{}", self.filters),
        }
    }
}

impl ExecutionPlan for IndexLookupExec {
    fn name(&self) -> &'static str {
        "IndexLookupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "IndexLookupExec has one partition, not {partition}"
            )));
        }
        Ok(Box::pin(MemoryStream::try_new(
            vec![self.batch.clone()],
            self.batch.schema(),
            None,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt32Type};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    fn people(names: &[&str]) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(names.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..names.len() as i64)),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> String {
        let mut batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        // An empty result prints the same whether it came as no batch or as an empty one.
        batches.retain(|b| b.num_rows() > 0);
        pretty_format_batches(&batches).unwrap().to_string()
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> String {
        rows(ctx, &format!("EXPLAIN {sql}")).await
    }

    #[tokio::test]
    async fn dictionary_columns_read_as_their_values_by_scan_lookup_and_join() {
        let (plain_schema, plain) = people(&["p1", "p2", "p3", "p2"]);
        let ids: DictionaryArray<UInt32Type> = vec!["p1", "p2", "p3", "p2"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("profile_id", ids.data_type().clone(), false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(ids), Arc::clone(plain[0].column(1))],
        )
        .unwrap();
        let table = PublishedTable::indexed(schema, vec![batch], &["profile_id"]).unwrap();
        let table = Arc::new(table.with_join_index(&["profile_id"]).unwrap());
        assert_eq!(table.schema(), plain_schema);
        let ctx = SessionContext::new();
        ctx.register_table("encoded", Arc::clone(&table) as _)
            .unwrap();
        let plain = PublishedTable::new(plain_schema, plain).unwrap();
        ctx.register_table("plain", Arc::new(plain)).unwrap();
        for (encoded, reference) in [
            (
                "SELECT profile_id, arrow_typeof(profile_id) AS t, n FROM encoded ORDER BY n",
                "SELECT profile_id, arrow_typeof(profile_id) AS t, n FROM plain ORDER BY n",
            ),
            (
                "SELECT profile_id, arrow_typeof(profile_id) AS t, n FROM encoded WHERE profile_id = 'p2'",
                "SELECT profile_id, arrow_typeof(profile_id) AS t, n FROM plain WHERE profile_id = 'p2'",
            ),
            (
                "SELECT e.profile_id, arrow_typeof(e.profile_id) AS t, p.n FROM plain p \
                 JOIN encoded e ON e.profile_id = p.profile_id ORDER BY p.n, e.n",
                "SELECT e.profile_id, arrow_typeof(e.profile_id) AS t, p.n FROM plain p \
                 JOIN plain e ON e.profile_id = p.profile_id ORDER BY p.n, e.n",
            ),
        ] {
            let found = rows(&ctx, encoded).await;
            assert!(
                found.contains("p2") && !found.contains("Dictionary"),
                "{found}"
            );
            assert_eq!(found, rows(&ctx, reference).await, "{encoded}");
        }
        assert!(
            plan(&ctx, "SELECT n FROM encoded WHERE profile_id = 'p2'")
                .await
                .contains("IndexLookupExec")
        );
    }

    #[tokio::test]
    async fn equalities_on_an_indexed_column_read_the_index_and_agree_with_a_scan() {
        let (schema, batches) = people(&["p1", "p2", "p3", "p2"]);
        let table = Arc::new(PublishedTable::indexed(schema, batches, &["profile_id"]).unwrap());
        let ctx = SessionContext::new();
        ctx.register_table("profiles", Arc::clone(&table) as _)
            .unwrap();
        for (indexed, scanned) in [
            (
                "SELECT * FROM profiles WHERE profile_id = 'p2'",
                "SELECT * FROM profiles WHERE profile_id || '' = 'p2'",
            ),
            (
                "SELECT n FROM profiles WHERE profile_id IN ('p3', 'p1', 'nobody')",
                "SELECT n FROM profiles WHERE profile_id || '' IN ('p3', 'p1', 'nobody')",
            ),
            (
                "SELECT * FROM profiles WHERE profile_id = 'p2' AND n > 1",
                "SELECT * FROM profiles WHERE profile_id || '' = 'p2' AND n > 1",
            ),
            (
                "SELECT * FROM profiles WHERE profile_id = 'nobody'",
                "SELECT * FROM profiles WHERE profile_id || '' = 'nobody'",
            ),
        ] {
            assert_eq!(
                rows(&ctx, indexed).await,
                rows(&ctx, scanned).await,
                "{indexed}"
            );
            assert!(
                plan(&ctx, indexed).await.contains("IndexLookupExec"),
                "{indexed}"
            );
            assert!(
                !plan(&ctx, scanned).await.contains("IndexLookupExec"),
                "{scanned}"
            );
        }
        // Other columns are not indexed: a scan, as before.
        assert!(
            !plan(&ctx, "SELECT * FROM profiles WHERE n = 1")
                .await
                .contains("IndexLookupExec")
        );
    }

    #[tokio::test]
    async fn a_publication_swaps_rows_and_index_together() {
        let (schema, batches) = people(&["p1", "p2"]);
        let table = PublishedTable::indexed(schema, batches, &["profile_id"]).unwrap();
        let before = table.snapshot().unwrap();
        let (_, next) = people(&["p9", "p8", "p1"]);
        table.publish(next).unwrap();
        let after = table.snapshot().unwrap();
        // A reader holding the old snapshot still finds its rows where its index says.
        assert_eq!(before.lookup(0, Key::Str("p1")), Some(vec![(0, 0)]));
        assert_eq!(before.lookup(0, Key::Str("p9")), Some(vec![]));
        assert_eq!(after.lookup(0, Key::Str("p1")), Some(vec![(0, 2)]));
        assert_eq!(after.lookup(1, Key::Int(0)), None, "n is not indexed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_during_publications_see_one_whole_publication() {
        // Publication g holds rows p0..p99, all with n = g: a lookup that mixed two
        // publications' rows or index would show two values of n, or miss a row.
        let publication = |g: i64| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("profile_id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, false),
            ]));
            // Odd publications put the rows in another order, so positions change too.
            let mut ids: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
            if g % 2 == 1 {
                ids.reverse();
            }
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(Int64Array::from(vec![g; 100])),
                ],
            )
            .unwrap();
            (schema, vec![batch.slice(0, 30), batch.slice(30, 70)])
        };
        let (schema, batches) = publication(0);
        let table = Arc::new(PublishedTable::indexed(schema, batches, &["profile_id"]).unwrap());
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::clone(&table) as _).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut g = 0;
                while !stop.load(Ordering::Relaxed) {
                    g += 1;
                    table.publish(publication(g).1).unwrap();
                    tokio::task::yield_now().await;
                }
                g
            })
        };
        for _ in 0..200 {
            let batches = ctx
                .sql("SELECT n FROM t WHERE profile_id IN ('p3', 'p50', 'p97')")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut seen: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(seen.len(), 3, "every key found once");
            seen.dedup();
            assert_eq!(seen.len(), 1, "one publication: {seen:?}");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            writer.await.unwrap() > 1,
            "the reads overlapped publications"
        );
    }

    #[test]
    fn only_key_columns_can_be_indexed() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        assert!(PublishedTable::indexed(Arc::clone(&schema), Vec::new(), &["x"]).is_err());
        assert!(PublishedTable::indexed(schema, Vec::new(), &["missing"]).is_err());
    }
}
