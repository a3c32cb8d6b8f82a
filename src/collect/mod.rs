//! The HTTP door: health now, the Segment-compatible event collector when landing arrives.
//!
//! Like the Postgres listener, it binds before start-up is announced so that a port in use
//! fails `serve` with the address in the message.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::Engine;
use crate::error::{C360Error, Result};

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
}

#[derive(Clone)]
struct Health {
    database: String,
    storage: String,
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
        if !addr.ip().is_loopback() {
            return Err(C360Error::UnsafeListen {
                addr: addr.to_string(),
                reason: "the HTTP listener has no write-key authentication yet, so it serves \
                         loopback addresses only"
                    .to_string(),
            });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let health = Health {
            database: engine.database_name().to_string(),
            storage: engine.storage().url().to_string(),
        };
        let router = Router::new()
            .route("/health", get(health_handler))
            .with_state(health);
        Ok(HttpServer { listener, router })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| C360Error::io("http listener", e))
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = self.local_addr()?;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| C360Error::Listen {
                addr: addr.to_string(),
                source,
            })
    }
}

async fn health_handler(State(health): State<Health>) -> axum::Json<serde_json::Value> {
    let body = HealthBody {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        database: &health.database,
        storage: &health.storage,
    };
    axum::Json(serde_json::to_value(body).unwrap_or_default())
}
