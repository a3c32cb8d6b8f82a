//! c360: a customer data platform engine on DataFusion.
//!
//! The [`Engine`] owns one DataFusion session, the storage root and the SQL workspace. The
//! doors (`pg` for the Postgres wire protocol, `collect` for HTTP) know the engine; the
//! engine knows nothing of them. See DESIGN.md for the whole flow.

pub mod collect;
pub mod config;
pub mod error;
pub mod functions;
pub mod generate;
pub mod pg;
pub mod render;
pub mod server;
pub mod storage;
pub mod workspace;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use config::Settings;
pub use error::{C360Error, Result};
use storage::Storage;

/// The schema that workspace tables and views land in, as in Postgres.
pub const DEFAULT_SCHEMA: &str = "public";

/// One statement's result: its schema (even when there are no rows) and its batches.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn row_count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

pub struct Engine {
    ctx: SessionContext,
    storage: Storage,
    settings: Settings,
    workspace: workspace::Applied,
}

impl Engine {
    /// Opens the storage root, builds the SQL session and applies the workspace.
    pub async fn open(settings: Settings) -> Result<Engine> {
        let storage = Storage::open(&settings.data, &settings.storage_options).await?;
        let ctx = new_session(&settings.pg.database)?;
        storage.register(&ctx);
        let workspace = workspace::apply(&ctx, &settings.workspace, &settings.variables).await?;
        tracing::info!(
            files = workspace.files,
            statements = workspace.statements,
            dir = %settings.workspace.display(),
            "workspace applied"
        );
        Ok(Engine {
            ctx,
            storage,
            settings,
            workspace,
        })
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn database_name(&self) -> &str {
        &self.settings.pg.database
    }

    pub fn workspace(&self) -> &workspace::Applied {
        &self.workspace
    }

    /// Runs one or more `;`-separated statements and returns each one's result.
    pub async fn query(&self, sql: &str) -> Result<Vec<QueryResult>> {
        let mut results = Vec::new();
        for statement in workspace::split_statements(sql) {
            let frame = self.ctx.sql(&statement.sql).await?;
            let schema = frame.schema().inner().clone();
            let batches = frame.collect().await?;
            results.push(QueryResult { schema, batches });
        }
        Ok(results)
    }
}

fn new_session(database: &str) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(database, DEFAULT_SCHEMA)
        .with_create_default_catalog_and_schema(true);
    // Analysts come from Postgres: parse identifiers, literals and operators its way.
    config
        .options_mut()
        .set("datafusion.sql_parser.dialect", "PostgreSQL")?;
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    functions::register_all(&mut state)?;
    Ok(SessionContext::new_with_state(state))
}
