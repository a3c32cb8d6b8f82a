//! A table whose whole contents are swapped in one step, so that readers always see the last
//! committed result (never a half-refreshed one) and never find the table missing.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug)]
pub struct PublishedTable {
    schema: SchemaRef,
    current: RwLock<Arc<MemTable>>,
}

impl PublishedTable {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<PublishedTable> {
        let table = MemTable::try_new(schema.clone(), vec![batches])?;
        Ok(PublishedTable {
            schema,
            current: RwLock::new(Arc::new(table)),
        })
    }

    /// Replaces the contents; scans already planned keep reading the previous ones.
    pub fn publish(&self, batches: Vec<RecordBatch>) -> Result<()> {
        let table = Arc::new(MemTable::try_new(self.schema.clone(), vec![batches])?);
        let mut current = self
            .current
            .write()
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))?;
        *current = table;
        Ok(())
    }

    fn snapshot(&self) -> Result<Arc<MemTable>> {
        self.current
            .read()
            .map(|table| Arc::clone(&table))
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))
    }
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
        self.snapshot()?
            .scan(state, projection, filters, limit)
            .await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.snapshot()?.supports_filters_pushdown(filters)
    }
}
