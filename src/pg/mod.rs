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
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::Engine;
use crate::error::{C360Error, Result};

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
    pub async fn bind(engine: &Engine, addr: SocketAddr) -> Result<PgServer> {
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
            handlers: Arc::new(Handlers::new(Arc::new(engine.context().clone()))),
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
    session: Arc<DfSessionService>,
    startup: Arc<OpenStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(ctx: Arc<SessionContext>) -> Handlers {
        let connections = Arc::new(ConnectionManager::new());
        Handlers {
            session: Arc::new(DfSessionService::new(ctx)),
            startup: Arc::new(OpenStartup {
                connections: Arc::clone(&connections),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
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
