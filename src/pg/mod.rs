//! The Postgres wire frontend: psql, drivers and BI tools reach the engine through it.
//!
//! Query handling and the `pg_catalog` come from the datafusion-postgres family; the accept
//! loop is ours, so that binding errors surface before start-up is announced, shutdown is
//! clean, and the rules below hold for every connection:
//!
//! - `catalog`, `catalog_rows`, `rewrite`: `pg_catalog` (with c360's views and functions in
//!   it), `version()` and the rewrites clients' metadata queries need;
//! - `auth`: SCRAM-SHA-256 against `[[pg.users]]` (verifiers: `scram`), or, with no users,
//!   an open door on loopback only;
//! - `tls`: TLS from `[pg.tls]`, required of every client when configured;
//! - `roles`: analysts read, admins do everything, decided on the parsed statement;
//! - `limits`: `max_connections`, `statement_timeout`, a memory pool per session, cancel;
//! - `query`: simple and extended queries, c360's own statements, `copy`, `settings`,
//!   `transactions`;
//! - `lookup`: prepared lookups by an indexed key, answered from the index without
//!   planning;
//! - `errors`: a SQLSTATE for every failure.

mod auth;
mod catalog;
mod catalog_rows;
mod copy;
mod errors;
mod limits;
mod lookup;
mod query;
mod rewrite;
mod roles;
mod scram;
mod settings;
mod tls;
mod transactions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use pgwire::messages::cancel::CancelRequest;
use pgwire::tokio::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use auth::hash_password;

use crate::Engine;
use crate::error::{C360Error, Result};

/// A bound, not yet serving, Postgres listener.
pub struct PgServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection of the listener shares.
struct Shared {
    engine: Arc<Engine>,
    policy: Arc<auth::StartupPolicy>,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    query_memory_mb: u64,
    memory: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
}

impl PgServer {
    /// Checks the security settings, loads TLS, installs the `pg_catalog` and binds `addr`.
    ///
    /// Without `[[pg.users]]` only loopback addresses are accepted: anything else would open
    /// every profile to the network. A TLS configuration that cannot be loaded is an error,
    /// never a silent fallback to plaintext.
    pub async fn bind(engine: &Arc<Engine>, addr: SocketAddr) -> Result<PgServer> {
        let settings = &engine.settings().pg;
        let users = auth::Users::from_config(&settings.users)?;
        if users.is_empty() && !addr.ip().is_loopback() {
            return Err(C360Error::UnsafeListen {
                addr: addr.to_string(),
                reason: "no [[pg.users]] are configured, so the Postgres listener would let \
                         anyone in; add users (see c360 hash-password) or listen on 127.0.0.1"
                    .to_string(),
            });
        }
        let tls = settings.tls.as_ref().map(tls::acceptor).transpose()?;
        catalog::install(engine.context(), engine.database_name())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
        if users.is_empty() {
            tracing::warn!(
                %addr,
                "Postgres listener is open without authentication: any local client is admin \
                 (configure [[pg.users]] to require passwords)"
            );
        } else {
            tracing::info!(%addr, tls = tls.is_some(), "Postgres listener requires SCRAM-SHA-256");
        }
        let policy = Arc::new(auth::StartupPolicy {
            users,
            tls_required: tls.is_some(),
            statement_timeout_ms: settings.statement_timeout_ms,
            authentication_timeout: std::time::Duration::from_millis(
                settings.authentication_timeout_ms,
            ),
            sessions: Arc::default(),
        });
        Ok(PgServer {
            listener,
            shared: Arc::new(Shared {
                engine: Arc::clone(engine),
                policy,
                tls,
                connections: Arc::new(Semaphore::new(settings.max_connections)),
                query_memory_mb: settings.query_memory_mb,
                memory: limits::server_pool(settings.memory_mb),
            }),
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
                        sessions.spawn(serve_connection(Arc::clone(&self.shared), socket, peer));
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

/// One connection, from its first byte to its end; its place among `max_connections` is
/// held until then. A connection past the limit still gets a proper 53300 answer.
async fn serve_connection(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    let permit = Arc::clone(&shared.connections).try_acquire_owned().ok();
    let ctx = match limits::session_context(
        shared.engine.context(),
        shared.query_memory_mb,
        &shared.memory,
    ) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot set up a pg session");
            return;
        }
    };
    let startup = Arc::new(auth::Startup::new(
        Arc::clone(&shared.policy),
        permit.is_none(),
    ));
    let expired = startup.authentication_expired();
    let handlers = Connection {
        queries: Arc::new(query::Queries::new(Arc::clone(&shared.engine), ctx)),
        startup,
        cancel: Arc::new(CancelRequests(Arc::clone(&shared.policy.sessions))),
    };
    tokio::select! {
        served = pgwire::tokio::process_socket(socket, shared.tls.clone(), handlers) => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "pg session ended with an error");
            }
        }
        () = expired => tracing::info!(%peer, "pg connection closed: no authentication in time"),
    }
    drop(permit);
}

/// The handlers of one connection.
struct Connection {
    queries: Arc<query::Queries>,
    startup: Arc<auth::Startup>,
    cancel: Arc<CancelRequests>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        Arc::clone(&self.queries)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

/// Cancel requests arrive on a connection of their own and name a session by its key.
struct CancelRequests(Arc<limits::Sessions>);

#[async_trait::async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.0.cancel(request.pid, &request.secret_key);
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        // Errors raised on pgwire's own paths (bind, describe) get their SQLSTATE here too.
        let raw = std::mem::replace(error, PgWireError::InvalidSASLState);
        *error = errors::classify(raw);
        tracing::debug!(peer = %client.socket_addr(), %error, "query failed");
    }
}
