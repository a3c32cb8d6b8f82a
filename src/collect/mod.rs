//! The HTTP door: a Segment-compatible event collector, `/health` and `/metrics`.
//!
//! Apps and websites send Segment calls (`api.rs` checks them, `segment.rs` turns them into
//! rows, with `typed.rs` as its fast path); `ingest.rs` group-commits them into the landed
//! `events` table and answers 200 only once they are durable; `metrics.rs` counts what
//! happened.
//!
//! Like the Postgres listener, it binds before start-up is announced so that a port in use
//! fails `serve` with the address in the message.

pub mod api;
pub mod dedup;
pub mod ingest;
pub mod metrics;
pub mod segment;
mod typed;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Engine;
use crate::error::{C360Error, Result};
use crate::sources::events::EVENTS_TABLE;
use crate::storage::table::LandedTable;
use ingest::Ingest;

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    ingest: Arc<Ingest>,
    events: Arc<LandedTable>,
}

#[derive(Clone)]
struct Health {
    database: String,
    storage: String,
    ingest: Arc<Ingest>,
    queue: Arc<crate::actions::Queue>,
    upkeep: Arc<crate::storage::landed::UpkeepStats>,
    events: Arc<LandedTable>,
    identity: Arc<crate::identity::manager::IdentityGraphs>,
}

#[derive(Serialize)]
struct HealthBody<'a> {
    status: &'a str,
    version: &'a str,
    database: &'a str,
    storage: &'a str,
}

impl HttpServer {
    pub async fn bind(engine: &Engine, addr: SocketAddr) -> Result<HttpServer> {
        let settings = &engine.settings().http;
        if !addr.ip().is_loopback() && settings.write_keys.is_empty() {
            return Err(C360Error::UnsafeListen {
                addr: addr.to_string(),
                reason: "the collector accepts any write key while [http] write_keys is empty, \
                         so it serves loopback addresses only"
                    .to_string(),
            });
        }
        let events = engine
            .landed()
            .get(EVENTS_TABLE)
            .ok_or_else(|| C360Error::NotFound(format!("landed table {EVENTS_TABLE}")))?;
        let window = Duration::from_secs(settings.dedup_window_secs);
        let recent = recent_message_ids(engine, window, settings.dedup_max_ids).await?;
        let ingest = Ingest::new(
            settings.buffer_events,
            window,
            settings.dedup_max_ids,
            Duration::from_millis(settings.ack_timeout_ms),
            recent,
        );
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let health = Health {
            database: engine.database_name().to_string(),
            storage: engine.storage().url().to_string(),
            ingest: Arc::clone(&ingest),
            queue: engine.refresh_engine().queue(),
            upkeep: engine.landed().stats(),
            events: Arc::clone(&events),
            identity: Arc::clone(engine.identity_graphs()),
        };
        let collector = api::Collector {
            ingest: Arc::clone(&ingest),
            write_keys: Arc::new(settings.write_keys.iter().cloned().collect()),
            max_body_bytes: settings.max_body_bytes,
        };
        let mut router = Router::new()
            .route("/v1/{kind}", post(api::post).with_state(collector))
            .route("/health", get(health_handler))
            .route("/metrics", get(metrics_handler))
            .with_state(health);
        // Destinations given as paths deliver to this server itself: the built-in sink.
        let local: Vec<_> = engine
            .settings()
            .actions
            .destinations
            .iter()
            .filter(|d| d.url.starts_with('/'))
            .collect();
        if !local.is_empty() {
            let secrets = local.iter().map(|d| d.secret.clone()).collect();
            router = router.merge(crate::sink::Sink::new(secrets, false).router());
        }
        Ok(HttpServer {
            listener,
            router,
            ingest,
            events,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| C360Error::io("http listener", e))
    }

    /// Serves until `shutdown`, then lets in-flight requests finish and commits what they
    /// buffered before returning.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = self.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let committer = tokio::spawn(Arc::clone(&self.ingest).run(self.events, stop_rx));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            });
        let _ = stop_tx.send(true);
        committer
            .await
            .map_err(|e| C360Error::io("event committer", std::io::Error::other(e)))?;
        served
    }
}

/// The message ids landed within the dedup window, so that a client retrying across a
/// restart (the commit landed, the 200 was lost) is not stored twice.
async fn recent_message_ids(
    engine: &Engine,
    window: Duration,
    max_ids: usize,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT CAST(message_id AS VARCHAR) FROM landed.{EVENTS_TABLE} \
         WHERE received_at >= now() - INTERVAL '{} seconds' \
         ORDER BY received_at DESC LIMIT {max_ids}",
        window.as_secs()
    );
    let batches = engine.context().sql(&sql).await?.collect().await?;
    let mut ids = Vec::new();
    for batch in batches {
        let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .map_err(|e| C360Error::arrow("reading recent message ids", e))?;
        let strings = column.as_string::<i32>();
        ids.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
    }
    Ok(ids)
}

/// 200 while events can land; 503 while the last commit failed (a full disk, a store
/// refusing writes), so that a load balancer sends SDKs elsewhere meanwhile.
async fn health_handler(State(health): State<Health>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let failing = health
        .ingest
        .metrics
        .failing
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1;
    let body = HealthBody {
        status: if failing { "degraded" } else { "ok" },
        version: env!("CARGO_PKG_VERSION"),
        database: &health.database,
        storage: &health.storage,
    };
    let status = if failing {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    (
        status,
        axum::Json(serde_json::to_value(body).unwrap_or_default()),
    )
        .into_response()
}

async fn metrics_handler(State(health): State<Health>) -> impl axum::response::IntoResponse {
    let mut text = health.ingest.metrics.render();
    let queue = Arc::clone(&health.queue);
    let depth = tokio::task::spawn_blocking(move || queue.depth())
        .await
        .ok()
        .and_then(|depth| depth.ok())
        .unwrap_or_default();
    health.queue.stats.render(&mut text, depth);
    health.upkeep.render(&mut text);
    // Compaction's backlog shows here first: group commits add a file each.
    crate::prometheus::sample(
        &mut text,
        "c360_collector_table_files",
        "Data files in the current snapshot of the events table.",
        "gauge",
        health.events.snapshot().files.len(),
    );
    health.identity.render_metrics(&mut text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
