//! The `landed` SQL schema: every landed table of the storage root, opened at start-up and
//! registered by name, so that `SELECT … FROM landed.events` reads the newest commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;

use super::Storage;
use super::table::{LandedTable, TABLES_DIR};
use crate::error::{C360Error, Result};

/// The SQL schema landed tables are registered in.
pub const LANDED_SCHEMA: &str = "landed";

pub struct LandedTables {
    storage: Storage,
    schema: Arc<MemorySchemaProvider>,
    tables: RwLock<BTreeMap<String, Arc<LandedTable>>>,
    stats: Arc<UpkeepStats>,
}

/// What background upkeep has done since start-up (`/metrics`).
#[derive(Debug, Default)]
pub struct UpkeepStats {
    pub compactions: AtomicU64,
    pub files_merged: AtomicU64,
}

impl UpkeepStats {
    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        crate::prometheus::sample(
            out,
            "c360_storage_compactions_total",
            "Compactions of landed tables committed since start-up.",
            "counter",
            self.compactions.load(Ordering::Relaxed),
        );
        crate::prometheus::sample(
            out,
            "c360_storage_compacted_files_total",
            "Small files merged away by compactions since start-up.",
            "counter",
            self.files_merged.load(Ordering::Relaxed),
        );
    }
}

impl LandedTables {
    /// Opens every table under `tables/` and registers the `landed` schema in `ctx`.
    pub async fn open(storage: &Storage, ctx: &SessionContext) -> Result<LandedTables> {
        let schema = Arc::new(MemorySchemaProvider::new());
        let catalog_name = ctx
            .state()
            .config()
            .options()
            .catalog
            .default_catalog
            .clone();
        let catalog = ctx
            .catalog(&catalog_name)
            .ok_or_else(|| C360Error::NotFound(format!("catalog {catalog_name}")))?;
        catalog.register_schema(LANDED_SCHEMA, schema.clone())?;
        let landed = LandedTables {
            storage: storage.clone(),
            schema,
            tables: RwLock::new(BTreeMap::new()),
            stats: Arc::default(),
        };
        for name in storage.list_children(TABLES_DIR).await? {
            if let Some(table) = LandedTable::open(storage, &name).await? {
                landed.insert(Arc::new(table))?;
            }
        }
        Ok(landed)
    }

    /// Registers a table opened or created elsewhere (by a load), replacing any handle of
    /// the same name.
    pub fn insert(&self, table: Arc<LandedTable>) -> Result<()> {
        self.schema.deregister_table(table.name())?;
        self.schema.register_table(
            table.name().to_string(),
            super::provider::LandedProvider::new(table.clone()),
        )?;
        let mut tables = self
            .tables
            .write()
            .map_err(|_| C360Error::Corrupt("landed tables lock poisoned".into()))?;
        tables.insert(table.name().to_string(), table);
        Ok(())
    }

    pub fn stats(&self) -> Arc<UpkeepStats> {
        Arc::clone(&self.stats)
    }

    pub fn get(&self, name: &str) -> Option<Arc<LandedTable>> {
        self.tables.read().ok()?.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.tables
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Compacts every table with enough small files (merging at most `compact_max_bytes`
    /// of them each; `None` skips compaction), and, when `vacuum` is set, deletes the files
    /// no snapshot has named for `retention`. Failures are logged per table and retried at
    /// the next round: upkeep never stops the server. Returns whether a table has enough
    /// small files left for another round straight away.
    pub async fn maintain(
        &self,
        compact_max_bytes: Option<u64>,
        vacuum: bool,
        retention: std::time::Duration,
    ) -> bool {
        let mut backlog = false;
        let tables: Vec<Arc<LandedTable>> = self
            .tables
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        for table in tables {
            let compacted = match compact_max_bytes {
                Some(max_bytes) => {
                    table
                        .compact(super::maintenance::COMPACT_AT_FILES, max_bytes)
                        .await
                }
                None => Ok(None),
            };
            match compacted {
                Ok(Some(done)) => {
                    backlog |= done.small_files_left >= super::maintenance::COMPACT_AT_FILES;
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .files_merged
                        .fetch_add(done.files_merged as u64, Ordering::Relaxed);
                    tracing::info!(
                        table = table.name(),
                        files = done.files_merged,
                        rows = done.rows,
                        version = done.version,
                        "compacted"
                    )
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(table = table.name(), error = %e, "compaction failed"),
            }
            if vacuum {
                match table.vacuum(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(table = table.name(), files = n, "vacuumed"),
                    Err(e) => tracing::warn!(table = table.name(), error = %e, "vacuum failed"),
                }
            }
        }
        backlog
    }

    /// The table `name`, created with `schema` if it does not exist yet.
    pub async fn get_or_create(&self, name: &str, schema: SchemaRef) -> Result<Arc<LandedTable>> {
        if let Some(table) = self.get(name) {
            return Ok(table);
        }
        let table = Arc::new(LandedTable::open_or_create(&self.storage, name, schema).await?);
        self.insert(table.clone())?;
        Ok(table)
    }
}
