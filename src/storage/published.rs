//! A table whose whole contents are swapped in one step, so that readers always see the last
//! committed result (never a half-refreshed one) and never find the table missing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

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
    schema: SchemaRef,
    current: RwLock<Contents>,
}

#[derive(Debug, Clone)]
struct Contents {
    table: Arc<MemTable>,
    batches: Vec<RecordBatch>,
    generation: u64,
}

impl Contents {
    fn new(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Contents> {
        Ok(Contents {
            table: Arc::new(MemTable::try_new(schema.clone(), vec![batches.clone()])?),
            batches,
            generation: next_generation(),
        })
    }
}

impl PublishedTable {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<PublishedTable> {
        Ok(PublishedTable {
            current: RwLock::new(Contents::new(&schema, batches)?),
            schema,
        })
    }

    /// Replaces the contents; scans already planned keep reading the previous ones.
    pub fn publish(&self, batches: Vec<RecordBatch>) -> Result<()> {
        let contents = Contents::new(&self.schema, batches)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))?;
        *current = contents;
        Ok(())
    }

    /// Changes whenever the contents are published, and only then.
    pub fn generation(&self) -> u64 {
        self.current.read().map_or(0, |current| current.generation)
    }

    /// The current contents (cheap: the arrays are shared, not copied).
    pub fn batches(&self) -> Result<Vec<RecordBatch>> {
        self.current
            .read()
            .map(|current| current.batches.clone())
            .map_err(|_| DataFusionError::Internal("published table lock poisoned".into()))
    }

    fn snapshot(&self) -> Result<Arc<MemTable>> {
        self.current
            .read()
            .map(|current| Arc::clone(&current.table))
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
