//! The Postgres wire frontend: psql, drivers and BI tools reach the engine through it.
//!
//! Query handling and the `pg_catalog` come from the datafusion-postgres family; the accept
//! loop is ours, so that binding errors surface before start-up is announced, shutdown is
//! clean, and the listening rules (loopback only until authentication lands) hold.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use pgwire::api::auth::StartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireServerHandlers,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::{C360Error, Result};
use crate::{Engine, ddl, workspace};

/// A bound, not yet serving, Postgres listener.
pub struct PgServer {
    listener: TcpListener,
    handlers: Arc<Handlers>,
}

impl PgServer {
    /// Installs the `pg_catalog` on the engine's context and binds `addr`.
    ///
    /// Only loopback addresses are accepted: without authentication (a later issue), anything
    /// else would open every profile to the network.
    pub async fn bind(engine: &Arc<Engine>, addr: SocketAddr) -> Result<PgServer> {
        if !addr.ip().is_loopback() {
            return Err(C360Error::UnsafeListen {
                addr: addr.to_string(),
                reason: "the Postgres listener has no authentication yet, so it serves loopback \
                         addresses only (use 127.0.0.1 or ::1)"
                    .to_string(),
            });
        }
        install_catalog(engine.context(), engine.database_name())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tracing::warn!(%addr, "Postgres listener is open without authentication (loopback only)");
        Ok(PgServer {
            listener,
            handlers: Arc::new(Handlers::new(Arc::clone(engine))),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| C360Error::io("pg listener", e))
    }

    /// Serves until `shutdown` resolves, then stops accepting and ends open sessions.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let handlers = Arc::clone(&self.handlers);
                        sessions.spawn(async move {
                            if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                                tracing::debug!(%peer, error = %e, "pg session ended with an error");
                            }
                        });
                    }
                    // Out of file descriptors and the like: keep serving the sessions we have.
                    Err(e) => tracing::warn!(error = %e, "pg accept failed"),
                },
                // Reap finished sessions so the set does not grow with the server's age.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        sessions.shutdown().await;
    }
}

/// Registers `pg_catalog` and its functions, once per context.
fn install_catalog(ctx: &SessionContext, database: &str) -> Result<()> {
    let already = ctx
        .catalog(database)
        .and_then(|catalog| catalog.schema("pg_catalog"))
        .is_some();
    if already {
        return Ok(());
    }
    setup_pg_catalog(ctx, database, EmptyContextProvider).map_err(|e| C360Error::Query(*e))
}

struct Handlers {
    simple: Arc<SimpleQueries>,
    session: Arc<DfSessionService>,
    startup: Arc<OpenStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(engine: Arc<Engine>) -> Handlers {
        let connections = Arc::new(ConnectionManager::new());
        let session = Arc::new(DfSessionService::new(Arc::new(engine.context().clone())));
        Handlers {
            simple: Arc::new(SimpleQueries {
                engine,
                datafusion: Arc::clone(&session),
            }),
            session,
            startup: Arc::new(OpenStartup {
                connections: Arc::clone(&connections),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.simple)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

/// Simple queries: c360's own statements go to the engine, everything else to DataFusion.
///
/// c360's statements are not SQL that DataFusion's parser knows, so they are recognised on
/// the text before it gets there. A query string mixing both runs statement by statement.
struct SimpleQueries {
    engine: Arc<Engine>,
    datafusion: Arc<DfSessionService>,
}

#[async_trait::async_trait]
impl SimpleQueryHandler for SimpleQueries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = workspace::split_statements(query);
        let mut own = Vec::with_capacity(statements.len());
        for statement in &statements {
            own.push(ddl::parse(&statement.sql).map_err(|e| user_error("42601", e.0))?);
        }
        if own.iter().all(Option::is_none) {
            return SimpleQueryHandler::do_query(&*self.datafusion, client, query).await;
        }
        let mut responses = Vec::new();
        for (statement, own) in statements.iter().zip(own) {
            match own {
                Some(own) => {
                    let tag = command_tag(&own);
                    self.engine
                        .execute_c360(own, false)
                        .await
                        .map_err(to_pg_error)?;
                    responses.push(Response::Execution(Tag::new(tag)));
                }
                None => {
                    responses.extend(
                        SimpleQueryHandler::do_query(&*self.datafusion, client, &statement.sql)
                            .await?,
                    );
                }
            }
        }
        Ok(responses)
    }
}

fn command_tag(statement: &ddl::Statement) -> &'static str {
    match statement {
        ddl::Statement::CreateIdentityGraph(_) => "CREATE IDENTITY GRAPH",
        ddl::Statement::RefreshIdentityGraph { .. } => "REFRESH IDENTITY GRAPH",
        ddl::Statement::DropIdentityGraph { .. } => "DROP IDENTITY GRAPH",
        ddl::Statement::CreateQuery(definition) => match definition.kind {
            ddl::QueryKind::Segment => "CREATE SEGMENT",
            ddl::QueryKind::MaterializedView => "CREATE MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "CREATE TRIGGER",
        },
        ddl::Statement::RefreshQuery { kind, .. } => match kind {
            ddl::QueryKind::Segment => "REFRESH SEGMENT",
            ddl::QueryKind::MaterializedView => "REFRESH MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "REFRESH TRIGGER",
        },
        ddl::Statement::DropQuery { kind, .. } => match kind {
            ddl::QueryKind::Segment => "DROP SEGMENT",
            ddl::QueryKind::MaterializedView => "DROP MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "DROP TRIGGER",
        },
        ddl::Statement::ExplainTrigger { .. } => "EXPLAIN",
        ddl::Statement::ForgetProfile { .. } => "FORGET PROFILE",
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The SQLSTATE a client can act on for each kind of engine error.
fn to_pg_error(error: C360Error) -> PgWireError {
    let code = match &error {
        C360Error::Syntax(_) => "42601",
        C360Error::AlreadyExists(_) => "42P07",
        C360Error::NotFound(_) => "42704",
        C360Error::DependentObjects(_) => "2BP01",
        C360Error::Identity(_) | C360Error::InvalidArgument(_) => "22023",
        C360Error::Query(_) => "XX000",
        _ => "58000",
    };
    user_error(code, error.to_string())
}

/// Accepts every client without a password; registered so that cancel requests find them.
struct OpenStartup {
    connections: Arc<ConnectionManager>,
}

#[async_trait::async_trait]
impl NoopStartupHandler for OpenStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(Arc::clone(&self.connections))
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!(peer = %client.socket_addr(), %error, "query failed");
    }
}
