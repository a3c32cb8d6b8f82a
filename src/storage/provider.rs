//! Landed tables seen from SQL: each scan reads the newest committed snapshot and only the
//! files it names, so a query never sees half a commit, nor the orphan files of a crash.
//! `DELETE FROM landed.t WHERE …` rewrites the files holding matching rows (see delete.rs);
//! `INSERT INTO landed.t …` appends its rows in one commit.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;

use super::SCAN_URL;
use super::table::LandedTable;
use super::writer::TableWriter;

/// A landed table as DataFusion sees it.
#[derive(Debug)]
pub struct LandedProvider(pub Arc<LandedTable>);

impl LandedProvider {
    pub fn new(table: Arc<LandedTable>) -> Arc<LandedProvider> {
        Arc::new(LandedProvider(table))
    }
}

#[async_trait]
impl TableProvider for LandedProvider {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = &self.0;
        let snapshot = table
            .refresh()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = snapshot.schema.clone();
        if snapshot.files.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // Files are spread over the session's partitions in commit order, so that a scan
        // uses every core and small tables stay one group.
        let partitions = state
            .config()
            .target_partitions()
            .clamp(1, snapshot.files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
        for (i, add) in snapshot.files.values().enumerate() {
            let path = table
                .storage()
                .path(&format!("{}/{}", table.dir(), add.path));
            groups[i % partitions].push(PartitionedFile::new(path.to_string(), add.size));
        }
        // No predicate here: DataFusion's physical optimizer pushes the query's filters
        // into the Parquet scan, which prunes row groups by their statistics.
        let source = Arc::new(ParquetSource::new(schema));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(SCAN_URL)?, source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// Appends the rows of `input` in one commit when the plan runs.
    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} into landed table {}: only appends are supported",
                self.0.name()
            )));
        }
        let sink = Arc::new(AppendSink {
            table: Arc::clone(&self.0),
            schema: self.0.schema(),
        });
        Ok(Arc::new(DataSinkExec::new(input, sink, None)))
    }

    /// Plans the delete; nothing is touched until the plan runs (so `EXPLAIN DELETE` is
    /// harmless).
    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate = filters
            .into_iter()
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        let df_schema = DFSchema::try_from(self.0.schema().as_ref().clone())?;
        let predicate = state.create_physical_expr(predicate, &df_schema)?;
        let stream = Arc::new(DeleteStream {
            table: Arc::clone(&self.0),
            predicate,
            schema: count_schema(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            count_schema(),
            vec![stream],
            None,
            Vec::new(),
            false,
            None,
        )?))
    }
}

/// DataFusion's DML result: one row, the number of rows affected.
fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

#[derive(Debug)]
struct DeleteStream {
    table: Arc<LandedTable>,
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl PartitionStream for DeleteStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (table, predicate, schema) = (
            Arc::clone(&self.table),
            Arc::clone(&self.predicate),
            Arc::clone(&self.schema),
        );
        let result = futures::stream::once(async move {
            let deleted = table
                .delete_matching(predicate)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![deleted]))])
                .map_err(DataFusionError::from)
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            result,
        ))
    }
}

/// The sink of `INSERT INTO`: data files as rows arrive, one commit at the end, so the
/// statement's rows appear together or not at all.
#[derive(Debug)]
struct AppendSink {
    table: Arc<LandedTable>,
    schema: SchemaRef,
}

impl DisplayAs for AppendSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "AppendSink: landed.{}", self.table.name())
    }
}

#[async_trait]
impl DataSink for AppendSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let external = |e: crate::error::C360Error| DataFusionError::External(Box::new(e));
        let table = &self.table;
        let mut writer = TableWriter::new(table.storage(), table.name(), table.schema());
        while let Some(batch) = data.next().await {
            let batch = table.conform(&batch?).map_err(external)?;
            writer.push(batch).await.map_err(external)?;
        }
        let rows = writer.rows();
        let adds = writer.finish().await.map_err(external)?;
        if !adds.is_empty() {
            table
                .commit("WRITE", adds, Vec::new())
                .await
                .map_err(external)?;
        }
        Ok(rows)
    }
}
