//! Limits on what one session may take: a place among `max_connections`, a
//! `statement_timeout`, a memory pool of its own, and cancellation from the client.
//!
//! pgwire only lets a cancel interrupt the planning of a query, not the streaming of its rows,
//! which is where DataFusion does the work; so c360 keeps its own registry of sessions and
//! wraps both the planning future and the row stream of every query in a [`QueryGuard`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, UnboundedMemoryPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use futures::{FutureExt, Stream, StreamExt};
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::SecretKey;
use tokio::sync::watch;
use tokio::time::Instant;

use super::errors;

/// The client metadata key where datafusion-postgres's `SET statement_timeout` keeps the
/// session's timeout in milliseconds; c360 seeds it from config at start-up and reads it
/// back here, so that `SET`, `SHOW` and enforcement agree.
pub const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// The longest query text accepted, in bytes. Past it the query is refused (54000) before
/// it is parsed: a 100 MB query string is an accident or an attack, not analysis.
pub const MAX_QUERY_BYTES: usize = 16 * 1024 * 1024;

/// Refuses a query text longer than [`MAX_QUERY_BYTES`].
pub fn check_query_length(sql: &str) -> PgWireResult<()> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(errors::error(
            "54000",
            format!(
                "query text of {} bytes is longer than the {} bytes c360 accepts",
                sql.len(),
                MAX_QUERY_BYTES
            ),
        ));
    }
    Ok(())
}

/// A live session, as the cancel registry knows it.
pub struct SessionControl {
    /// Counts cancel requests; a query is cancelled by any request made after it started.
    cancels: watch::Sender<u64>,
}

impl SessionControl {
    fn cancel(&self) {
        self.cancels.send_modify(|n| *n += 1);
    }
}

/// Sessions by (pid, secret key), as sent in BackendKeyData and echoed in CancelRequest.
#[derive(Default)]
pub struct Sessions {
    by_key: Mutex<HashMap<(i32, Vec<u8>), Arc<SessionControl>>>,
}

impl Sessions {
    /// Registers a session; it stays registered as long as the returned guard lives (the
    /// guard is kept in the connection's session extensions, so it drops with the socket).
    pub fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: &SecretKey,
    ) -> (Arc<SessionControl>, Registration) {
        let key = (pid, secret.to_bytes().to_vec());
        let (cancels, _) = watch::channel(0);
        let control = Arc::new(SessionControl { cancels });
        if let Ok(mut map) = self.by_key.lock() {
            map.insert(key.clone(), Arc::clone(&control));
        }
        let registration = Registration {
            sessions: Arc::clone(self),
            key,
        };
        (control, registration)
    }

    /// Cancels the running query of the session with this key, if any; an unknown key is
    /// ignored, as PostgreSQL does, so that a guesser learns nothing.
    pub fn cancel(&self, pid: i32, secret: &SecretKey) {
        let key = (pid, secret.to_bytes().to_vec());
        let control = self
            .by_key
            .lock()
            .ok()
            .and_then(|map| map.get(&key).cloned());
        if let Some(control) = control {
            control.cancel();
        }
    }
}

/// Removes a session from the registry when the connection goes away.
pub struct Registration {
    sessions: Arc<Sessions>,
    key: (i32, Vec<u8>),
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sessions.by_key.lock() {
            map.remove(&self.key);
        }
    }
}

/// The session's `statement_timeout`, if any.
pub fn statement_timeout<C: ClientInfo + ?Sized>(client: &C) -> Option<Duration> {
    client
        .metadata()
        .get(STATEMENT_TIMEOUT_KEY)
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Interrupts one query when its session is cancelled or its timeout passes.
#[derive(Clone)]
pub struct QueryGuard {
    deadline: Option<Instant>,
    cancels: Option<watch::Receiver<u64>>,
    started_at_cancel: u64,
}

impl QueryGuard {
    /// Starts guarding a query of `client`'s session, now.
    pub fn start<C: ClientInfo + ?Sized>(client: &C) -> QueryGuard {
        let cancels = client
            .session_extensions()
            .get::<Arc<SessionControl>>()
            .map(|control| control.cancels.subscribe());
        QueryGuard {
            deadline: statement_timeout(client).map(|timeout| Instant::now() + timeout),
            started_at_cancel: cancels.as_ref().map_or(0, |rx| *rx.borrow()),
            cancels,
        }
    }

    /// Resolves with the error to report once the query must stop; never resolves otherwise.
    async fn interrupted(mut self) -> PgWireError {
        let started = self.started_at_cancel;
        let cancelled = async {
            match self.cancels.as_mut() {
                Some(rx) => {
                    if rx.wait_for(|n| *n > started).await.is_err() {
                        // The session is gone: nothing will ever cancel this query.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let timed_out = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cancelled => errors::query_canceled("canceling statement due to user request"),
            _ = timed_out => errors::query_canceled("canceling statement due to statement timeout"),
        }
    }

    /// Runs `work` (planning, or a whole statement) until it ends or the query must stop.
    ///
    /// A panic in the engine (DataFusion has a few on odd plans) becomes an XX000 error for
    /// this query instead of a dropped connection.
    pub async fn run<T>(&self, work: impl Future<Output = PgWireResult<T>>) -> PgWireResult<T> {
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        tokio::select! {
            biased;
            error = self.clone().interrupted() => Err(error),
            result = work => match result {
                Ok(result) => result.map_err(errors::classify),
                Err(panic) => Err(errors::internal(panic)),
            },
        }
    }

    /// Guards a result stream: it ends with a 57014 error when the query must stop, and
    /// dropping it (which pgwire does right after) stops DataFusion's work.
    pub fn stream<T, S>(&self, rows: S) -> impl Stream<Item = PgWireResult<T>> + Send + 'static
    where
        S: Stream<Item = PgWireResult<T>> + Send + Unpin + 'static,
        T: Send + 'static,
    {
        let interrupted = Box::pin(self.clone().interrupted());
        futures::stream::unfold(Some((rows, interrupted)), |state| async move {
            let (mut rows, mut interrupted) = state?;
            tokio::select! {
                biased;
                error = &mut interrupted => Some((Err(error), None)),
                item = rows.next() => {
                    let item = item?.map_err(errors::classify);
                    Some((item, Some((rows, interrupted))))
                }
            }
        })
    }
}

fn pool_of(limit_mb: u64) -> Arc<dyn MemoryPool> {
    if limit_mb == 0 {
        Arc::new(UnboundedMemoryPool::default())
    } else {
        let bytes = usize::try_from(limit_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        Arc::new(GreedyMemoryPool::new(bytes))
    }
}

/// The memory all sessions share (`pg.memory_mb`, 0: unbounded).
pub fn server_pool(limit_mb: u64) -> Arc<dyn MemoryPool> {
    pool_of(limit_mb)
}

/// A session's memory: each reservation counts against both the session's limit and the
/// server's, so that many sessions each under their own limit cannot together exhaust the
/// machine. Whichever is exceeded fails the query asking for more (53200), not the others.
#[derive(Debug)]
struct SessionPool {
    session: Arc<dyn MemoryPool>,
    server: Arc<dyn MemoryPool>,
}

impl std::fmt::Display for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session pool ({}) within the server's ({})",
            self.session, self.server
        )
    }
}

impl MemoryPool for SessionPool {
    fn name(&self) -> &str {
        "c360 session"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.session.register(consumer);
        self.server.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.session.unregister(consumer);
        self.server.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.session.grow(reservation, additional);
        self.server.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.session.shrink(reservation, shrink);
        self.server.shrink(reservation, shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.session.try_grow(reservation, additional)?;
        if let Err(e) = self.server.try_grow(reservation, additional) {
            self.session.shrink(reservation, additional);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.session.reserved()
    }

    fn memory_limit(&self) -> datafusion::execution::memory_pool::MemoryLimit {
        self.session.memory_limit()
    }
}

/// A session context of its own for one connection: the engine's catalogs, functions and
/// settings, with a memory pool of `limit_mb` (0: unbounded) inside the server's `server`
/// pool. A session runs one query at a time, so this is the per-query limit; a query over
/// it fails alone (53200).
pub fn session_context(
    engine_ctx: &SessionContext,
    limit_mb: u64,
    server: &Arc<dyn MemoryPool>,
) -> PgWireResult<SessionContext> {
    let pool: Arc<dyn MemoryPool> = Arc::new(SessionPool {
        session: pool_of(limit_mb),
        server: Arc::clone(server),
    });
    let runtime = RuntimeEnvBuilder::from_runtime_env(engine_ctx.runtime_env().as_ref())
        .with_memory_pool(pool)
        .build_arc()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let state = SessionStateBuilder::new_from_existing(engine_ctx.state())
        .with_runtime_env(runtime)
        .build();
    Ok(SessionContext::new_with_state(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_server_memory() {
        let server = server_pool(3);
        let session = |limit| -> Arc<dyn MemoryPool> {
            Arc::new(SessionPool {
                session: pool_of(limit),
                server: Arc::clone(&server),
            })
        };
        let (first, second) = (session(2), session(2));
        let mb = 1024 * 1024;
        let a = MemoryConsumer::new("a").register(&first);
        let b = MemoryConsumer::new("b").register(&second);
        // Over its own limit.
        assert!(a.try_grow(3 * mb).is_err());
        a.try_grow(2 * mb).unwrap();
        // Within its own limit, over what the server has left.
        assert!(b.try_grow(2 * mb).is_err());
        assert_eq!(second.reserved(), 0, "a refused reservation is given back");
        b.try_grow(mb).unwrap();
        drop(a);
        b.try_grow(mb).unwrap();
        assert_eq!(server.reserved(), 2 * mb);
    }
}
