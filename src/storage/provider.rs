//! Landed tables seen from SQL: each scan reads the newest committed snapshot and only the
//! files it names, so a query never sees half a commit, nor the orphan files of a crash.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use super::SCAN_URL;
use super::table::LandedTable;

#[async_trait]
impl TableProvider for LandedTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        LandedTable::schema(self)
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
        let snapshot = self
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
            let path = self.storage().path(&format!("{}/{}", self.dir(), add.path));
            groups[i % partitions].push(PartitionedFile::new(path.to_string(), add.size));
        }
        let source = Arc::new(ParquetSource::new(schema));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(SCAN_URL)?, source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
