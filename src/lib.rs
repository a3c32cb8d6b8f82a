//! c360: a customer data platform engine on DataFusion.
//!
//! The [`Engine`] owns one DataFusion session, the storage root and the SQL workspace. The
//! doors (`pg` for the Postgres wire protocol, `collect` for HTTP) know the engine; the
//! engine knows nothing of them. See DESIGN.md for the whole flow.

pub mod actions;
mod allocator;
pub mod collect;
pub mod config;
pub mod ddl;
pub mod erasure;
pub mod error;
pub mod functions;
pub mod generate;
pub mod identity;
pub mod pg;
mod prefetch;
pub mod prometheus;
pub mod refresh;
pub mod render;
pub mod server;
pub mod sink;
pub mod sources;
pub mod storage;
pub mod system_tables;
pub mod workspace;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

/// mimalloc, as datafusion-cli uses: under the collector's load glibc's malloc took a fifth
/// of the CPU, and its per-thread arenas kept freed memory resident. Blocks of 32 MiB and
/// more are mapped directly (see `allocator`). Declared here, so that the server, the tests
/// and the benches all run on the same allocator.
#[global_allocator]
static ALLOCATOR: allocator::C360Allocator = allocator::C360Allocator;

use allocator::tune_mimalloc;

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
    /// The result of a statement that returns no rows (DDL).
    pub fn empty() -> QueryResult {
        QueryResult {
            schema: std::sync::Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            batches: Vec::new(),
        }
    }

    pub fn row_count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

pub struct Engine {
    ctx: SessionContext,
    storage: Storage,
    settings: Settings,
    workspace: workspace::Applied,
    identity: Arc<identity::manager::IdentityGraphs>,
    refresh: refresh::RefreshEngine,
    landed: storage::landed::LandedTables,
}

impl Engine {
    /// Opens the storage root, builds the SQL session and applies the workspace.
    pub async fn open(settings: Settings) -> Result<Engine> {
        let mut engine = Engine::open_without_workspace(settings).await?;
        let dir = engine.settings.workspace.clone();
        engine.workspace = workspace::apply(&engine, &dir, &engine.settings.variables).await?;
        tracing::info!(
            files = engine.workspace.files,
            statements = engine.workspace.statements,
            dir = %dir.display(),
            "workspace applied"
        );
        Ok(engine)
    }

    /// Opens the storage root and its landed tables only: what a bulk load needs, without
    /// the cost of applying the workspace (and refreshing its identity graphs).
    pub async fn open_without_workspace(settings: Settings) -> Result<Engine> {
        tune_mimalloc();
        allocator::start_prefaulting();
        let storage = Storage::open(&settings.data, &settings.storage_options).await?;
        let ctx = new_session(&settings.pg.database)?;
        storage.register(&ctx);
        // Landed tables come before the workspace, whose views read them; the collector's
        // `events` table always exists so that the demo's `events` view can union it.
        let landed = storage::landed::LandedTables::open(&storage, &ctx).await?;
        landed
            .get_or_create(sources::events::EVENTS_TABLE, sources::events::schema())
            .await?;
        // Committed segments, materialized views and triggers come back before the
        // workspace, which may read them.
        let refresh =
            refresh::RefreshEngine::open(&ctx, storage.clone(), settings.actions.clone()).await?;
        let identity = Arc::new(identity::manager::IdentityGraphs::new(storage.clone()));
        system_tables::register_identity_graphs(&ctx, Arc::clone(&identity))?;
        Ok(Engine {
            ctx,
            landed,
            refresh,
            identity,
            storage,
            settings,
            workspace: workspace::Applied::default(),
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

    pub fn identity_graphs(&self) -> &Arc<identity::manager::IdentityGraphs> {
        &self.identity
    }

    pub fn refresh_engine(&self) -> &refresh::RefreshEngine {
        &self.refresh
    }

    /// Runs every scheduled refresh that is due: identity graphs first, then the segments and
    /// materialized views (inputs before their readers). A failure is logged and keeps the
    /// last result; the schedule tries again at its next time.
    pub async fn refresh_due(&self) {
        for name in self.identity.due(&self.ctx).await {
            let statement = ddl::Statement::RefreshIdentityGraph { name: name.clone() };
            if let Err(e) = self.execute_c360(statement, false).await {
                tracing::warn!(graph = %name, error = %e, "scheduled identity refresh failed");
            }
        }
        let due = self.refresh.due(chrono::Utc::now()).await;
        for (name, outcome) in self.refresh.refresh_tick(&self.ctx, &due).await {
            match outcome {
                Ok(report) => log_refresh(&report),
                Err(e) => tracing::warn!(name = %name, error = %e, "scheduled refresh failed"),
            }
        }
    }

    /// The landed tables (`landed.*` in SQL): the collector's `events`, bulk loads.
    pub fn landed(&self) -> &storage::landed::LandedTables {
        &self.landed
    }

    /// Loads CSV, NDJSON or Parquet files (paths or object store URLs) into landed table
    /// `table`, creating it from the first file's columns if needed, in one commit.
    /// `progress` gets the number of rows read so far.
    pub async fn load(
        &self,
        table: &str,
        inputs: &[String],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<sources::load::LoadReport> {
        sources::load::load_files(self, table, inputs, progress).await
    }

    /// Starts a load of record batches into landed table `table` (what `COPY … FROM STDIN`
    /// needs): push batches, then commit them all at once.
    pub fn loader(&self, table: &str) -> Result<sources::load::Loader> {
        sources::load::Loader::new(self, table)
    }

    /// Runs one or more `;`-separated statements and returns each one's result.
    pub async fn query(&self, sql: &str) -> Result<Vec<QueryResult>> {
        let mut results = Vec::new();
        for statement in workspace::split_statements(sql) {
            results.push(self.execute(&statement.sql).await?);
        }
        Ok(results)
    }

    /// Runs one statement: c360's own (see [`ddl`]) or DataFusion's.
    pub async fn execute(&self, sql: &str) -> Result<QueryResult> {
        match ddl::parse(sql).map_err(|e| C360Error::Syntax(e.0))? {
            Some(statement) => self.execute_c360(statement, false).await,
            None => {
                let frame = self.ctx.sql(sql).await?;
                let schema = frame.schema().inner().clone();
                let batches = frame.collect().await?;
                Ok(QueryResult { schema, batches })
            }
        }
    }

    /// Runs one of c360's statements. `declarative` is set while a workspace is applied: an
    /// unchanged definition is then kept (and refreshed) rather than refused as existing.
    pub async fn execute_c360(
        &self,
        statement: ddl::Statement,
        declarative: bool,
    ) -> Result<QueryResult> {
        let report = match statement {
            ddl::Statement::CreateIdentityGraph(definition) => {
                self.identity
                    .create(&self.ctx, definition, declarative)
                    .await?
            }
            ddl::Statement::RefreshIdentityGraph { name } => {
                self.identity.refresh(&self.ctx, &name).await?
            }
            ddl::Statement::DropIdentityGraph { name, if_exists } => {
                self.identity
                    .drop_graph(&self.ctx, &name, if_exists)
                    .await?;
                return Ok(QueryResult::empty());
            }
            ddl::Statement::CreateQuery(definition) => {
                if let Some(report) = self
                    .refresh
                    .create(&self.ctx, definition, declarative)
                    .await?
                {
                    log_refresh(&report);
                }
                return Ok(QueryResult::empty());
            }
            ddl::Statement::RefreshQuery { kind, name } => {
                log_refresh(&self.refresh.refresh(&self.ctx, Some(kind), &name).await?);
                return Ok(QueryResult::empty());
            }
            ddl::Statement::ExplainTrigger { name } => {
                return self.refresh.explain_trigger(&self.ctx, &name).await;
            }
            ddl::Statement::DropQuery {
                kind,
                name,
                if_exists,
            } => {
                self.refresh
                    .drop_item(&self.ctx, kind, &name, if_exists)
                    .await?;
                return Ok(QueryResult::empty());
            }
            ddl::Statement::ForgetProfile { profile_id, graph } => {
                return erasure::forget_profile(self, &profile_id, graph.as_deref()).await;
            }
        };
        tracing::info!(
            graph = %report.graph,
            full_build = report.full_build,
            rows = report.rows_read,
            logged = report.rows_logged,
            records = report.summary.records,
            merges = report.summary.merges,
            refused = report.summary.refused,
            profiles = report.profiles,
            ms = report.duration.as_millis() as u64,
            phases = %report.phases_text(),
            "identity graph refreshed"
        );
        Ok(QueryResult::empty())
    }
}

fn log_refresh(report: &refresh::RefreshReport) {
    tracing::info!(
        name = %report.name,
        kind = report.kind.sql_name(),
        skipped = report.skipped,
        rows = report.rows,
        entered = report.entered,
        exited = report.exited,
        ms = report.duration.as_millis() as u64,
        "refreshed"
    );
}

fn new_session(database: &str) -> Result<SessionContext> {
    // DataFusion's own settings can be tuned with DATAFUSION_* environment variables
    // (e.g. DATAFUSION_EXECUTION_TARGET_PARTITIONS); the settings below always apply.
    let mut config = SessionConfig::from_env()?
        .with_information_schema(true)
        .with_default_catalog_and_schema(database, DEFAULT_SCHEMA)
        .with_create_default_catalog_and_schema(true);
    // Analysts come from Postgres: parse identifiers, literals and operators its way.
    config
        .options_mut()
        .set("datafusion.sql_parser.dialect", "PostgreSQL")?;
    // DataFusion moves "cheap" leaf expressions below filters, into the scans; the JSON
    // functions declare themselves such, but parsing a JSON text column is not cheap: at 1M
    // customers `properties ->> 'category'` was parsed for all 12.7M events (6 s) before the
    // filter kept the 3.4M product views (or the 119k orders, for `all_sales`). Kept off, each
    // expression is computed where the query puts it, after the filters.
    config.options_mut().set(
        "datafusion.optimizer.enable_leaf_expression_pushdown",
        "false",
    )?;
    // DataFusion caches directory listings forever by default; files landing in a source
    // folder must be seen by the next query and refresh, so listings are not cached.
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
        .build_arc()?;
    // Joins on an indexed column of a published table (records by key, profiles by id) read
    // the index: see storage::index_join. The rule goes right after DataFusion's join
    // selection, so that distribution and ordering are planned around what it makes.
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|rule| rule.name() == storage::index_join::IndexJoinRule::AFTER)
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, std::sync::Arc::new(storage::index_join::IndexJoinRule));
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    functions::register_all(&mut state)?;
    Ok(SessionContext::new_with_state(state))
}
